"""`imagegen serve`: the engine behind HTTP, with a job queue that survives restarts.

Importing this package needs the server extra (FastAPI, uvicorn); the rest of imagegen never imports it.
"""
