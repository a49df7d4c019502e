"""An existing FastAPI service ("orders") that uses resync for its connections.

Run it with ``uvicorn examples.fastapi_app.app:app`` from the repository root
(settings from the environment, as for ``resync serve``). See README.md here.
"""
