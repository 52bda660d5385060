"""The two HTTP applications on one aiohttp event loop, and ``serve()``.

- ``serve`` — load everything (``neuroscope.runtime``), print the start-up panel, serve both ports until a signal;
- ``app`` — both applications and their shared state (``state``); ``access`` and ``origins`` — the ``Host``
  check, API key, CORS and allowed origins; ``body`` — JSON bodies within limits; ``errors`` — OpenAI-shaped
  errors and the error middleware; ``redact`` — credentials kept out of logs and error answers;
- the chat port: ``chat`` (``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``), ``schema`` (request
  validation), ``prompt`` (chat templates);
- the features port: ``features`` (``/v1/features/stream`` over SSE, labels, info), ``explore`` (a feature's
  page, search, inspect: the routes over ``neuroscope.explore``), ``viewer`` (the viewer's files), ``metrics``
  (Prometheus).

May import: neuroscope.core, neuroscope.calibration, neuroscope.labels, neuroscope.explore, neuroscope.store,
neuroscope.config, neuroscope.runtime.
"""
