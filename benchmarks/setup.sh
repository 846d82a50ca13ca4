#!/usr/bin/env bash
# Installs the peers the benchmarks compare against (never needed by the test suite).
# rwkv-cpp 0.0.1 is an sdist: pip compiles rwkv.cpp (C++/ggml) here, which needs a C++ compiler
# and cmake-free make (about 15 s on a quiet machine). --no-deps: it lists torch as a dependency,
# and the torch already installed must stay the one we measure.
set -euo pipefail
python -m pip install "rwkv==0.8.32" "transformers>=4.40,<6" "matplotlib>=3.7"
python -m pip install --no-deps "rwkv-cpp==0.0.1"
# llama.cpp itself for the GGUF comparisons (tests marked llama_cpp, benchmarks/gguf_agreement.py):
# llama-cpp-python built from its sdist (about 30 minutes on 2 cores), and the gguf / ONNX packages.
python -m pip install scikit-build-core cmake diskcache jinja2 "gguf>=0.17" onnx onnxruntime onnxscript
CMAKE_ARGS="-DGGML_NATIVE=ON" python -m pip install --no-deps --no-build-isolation "llama-cpp-python==0.3.36"
