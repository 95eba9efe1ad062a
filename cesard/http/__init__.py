"""cesard-http: the HTTP (OpenAI-compatible) and Wyoming front door of a spool."""
