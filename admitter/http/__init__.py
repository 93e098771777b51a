"""The HTTP edge: the FastAPI app, the completion routes (the hot path), admin and usage routes,
request bodies, credentials, OpenAI-shaped errors, the hand-written OpenAPI document and uvicorn options."""
