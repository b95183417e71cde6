"""A STAND-IN for vLLM, for tests whose subject is not vLLM: put this folder first on PYTHONPATH and
`spectrain.vllm_launcher` (what the serve step starts) runs :mod:`vllm.entrypoints.cli.main` from here.

It keeps what those tests rely on and nothing more: `vllm serve MODEL --host --port --served-model-name`
answers the OpenAI API behind the API key in ``VLLM_API_KEY`` (models, chat, completions, /tokenize, /health,
an empty /metrics) within a second (each generation after STANDIN_VLLM_REPLY_SECONDS, 0 by default), and like vLLM it runs an engine child process in the server's session,
so stopping the server means stopping a process tree. It loads no model and its replies are canned.
"""
