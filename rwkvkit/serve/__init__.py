"""``rwkvkit serve``: an OpenAI-compatible server over the engine, with a prefix state cache.

- :mod:`.app`: routes, OpenAI's response and stream shapes, the API key, request counts;
- :mod:`.schemas`: the request bodies checked field by field, OpenAI's error shape;
- :mod:`.scheduler`: the one thread that drives the model; requests reach it through queues;
- :mod:`.cache`: the token-trie prefix state cache, least recently used out past its bytes;
- :mod:`.chatformat`: a conversation as ids that each next turn extends;
- :mod:`.jsonmode`: ``response_format: json_object`` as a per-row token constraint;
- :mod:`.registry`: the base model and its named variants (``/v1/models``);
- :mod:`.metrics`: Prometheus text for ``/metrics``;
- :mod:`.launch`: start ``rwkvkit serve`` in a child process and wait until it answers;
- ``static/index.html``: the chat page, one file, no build step, nothing fetched from elsewhere.
"""
