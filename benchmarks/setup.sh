#!/usr/bin/env bash
# Installs the peers the benchmarks compare against (never needed by the test suite).
# rwkv-cpp 0.0.1 is an sdist: pip compiles rwkv.cpp (C++/ggml) here, which needs a C++ compiler
# and cmake-free make (about 15 s on a quiet machine). --no-deps: it lists torch as a dependency,
# and the torch already installed must stay the one we measure.
set -euo pipefail
python -m pip install "rwkv==0.8.32" "transformers>=4.40,<6" "matplotlib>=3.7"
python -m pip install --no-deps "rwkv-cpp==0.0.1"

# llama.cpp: the RWKV-6/7 speed peer (issue 12) and the GGUF comparisons (tests marked llama_cpp,
# benchmarks/gguf_agreement.py): llama-cpp-python 0.3.36 built from its PyPI sdist for this CPU
# (about 30 minutes on 2 cores), the gguf / ONNX packages, and llama.cpp's own converter
# (convert_hf_to_gguf.py with its conversion/ and gguf-py/ folders, shipped in the same sdist under
# vendor/llama.cpp/) unpacked to ~/.cache/rwkvkit/llama.cpp, where `rwkvkit bench` looks for it
# (--llama-cpp DIR to change).
LLAMA_CPP_VERSION=0.3.36
python -m pip install scikit-build-core cmake diskcache jinja2 "gguf>=0.17" onnx onnxruntime onnxscript
if ! python -c "import llama_cpp" 2>/dev/null; then
  CMAKE_ARGS="-DGGML_NATIVE=ON" python -m pip install --no-deps --no-build-isolation --no-binary llama-cpp-python \
    "llama-cpp-python==${LLAMA_CPP_VERSION}"
fi
CONVERTER_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/rwkvkit/llama.cpp"
if [ ! -f "$CONVERTER_DIR/convert_hf_to_gguf.py" ]; then
  SDIST_DIR=$(mktemp -d)
  python -m pip download --no-deps --no-binary :all: "llama-cpp-python==${LLAMA_CPP_VERSION}" -d "$SDIST_DIR"
  mkdir -p "$CONVERTER_DIR"
  tar -xzf "$SDIST_DIR"/llama_cpp_python-${LLAMA_CPP_VERSION}.tar.gz -C "$SDIST_DIR"
  SRC="$SDIST_DIR/llama_cpp_python-${LLAMA_CPP_VERSION}/vendor/llama.cpp"
  cp -r "$SRC/convert_hf_to_gguf.py" "$SRC/gguf-py" "$CONVERTER_DIR/"
  if [ -d "$SRC/conversion" ]; then cp -r "$SRC/conversion" "$CONVERTER_DIR/"; fi
  rm -rf "$SDIST_DIR"
fi
