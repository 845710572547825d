"""The web app and REST API (FastAPI): `create_app` for an open collection, `serve` to run it.

Endpoints (all JSON unless noted; OpenAPI docs at /docs, served offline):

    GET    /                              the web page (static/index.html, app.js, style.css)
    POST   /api/search                    search by an uploaded image (multipart field `file`);
                                          query parameters k, embedder, label, box=x0,y0,x1,y1
    GET    /api/images/{id}/similar       search by an indexed image (itself excluded); same parameters
    GET    /api/images?offset=&limit=&label=   browse: a page of indexed images
    POST   /api/images?label=             add an uploaded image (stored in <collection>/uploads/)
    GET    /api/images/{id}               an image's details
    GET    /api/images/{id}/file          the image file itself
    GET    /api/images/{id}/thumbnail     a JPEG thumbnail, cached in <collection>/thumbnails/
    DELETE /api/images/{id}               forget an image (a file the server stored is deleted too)
    GET    /api/stats                     collection statistics
    GET    /api/embedders                 embedders, and which can be searched with
    GET    /api/limits                    upload size and pixel limits, largest k

Errors are `{"detail": "..."}` with 404 (no such image), 413 (upload over the size or
pixel limit), 422 (not an image, bad parameter) or 403 (a write from a foreign web page).
"""

from .app import create_app, serve

__all__ = ["create_app", "serve"]
