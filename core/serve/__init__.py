"""``guardkit serve``: a thin HTTP layer (FastAPI on uvicorn) over ``guardkit.Engine``.

```python
import uvicorn
from guardkit.serve import ServeSettings, create_app
uvicorn.run(create_app(ServeSettings(workers=1)), host="127.0.0.1", port=8000)
```

It validates uploads, hands photos to a small pool of worker threads that each hold a loaded Engine
(``guardkit.serve.pool``), and returns what the Engine returns; the one place it calls the Engine is
``guardkit.serve.worker``. Needs the ``serve`` extra (``pip install "guardkit[serve]"``).
"""

from __future__ import annotations

from guardkit.serve.app import create_app
from guardkit.serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]
