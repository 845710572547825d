"""`lookalike serve`: the REST API and web page."""

from __future__ import annotations

import argparse

from .common import add_collection_option


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("serve", help="serve the web app and REST API")
    add_collection_option(parser)
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="bind address (default 127.0.0.1, this machine only); any other address needs a token",
    )
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-upload-mb", type=float, default=20.0)
    parser.add_argument("--cors-origin", action="append", help="allow this browser origin (off by default)")
    parser.add_argument(
        "--token",
        help="access token every API request must carry (Authorization: Bearer TOKEN); needed beyond loopback."
        " Prefer the LOOKALIKE_TOKEN environment variable: a command line is visible to other users",
    )
    parser.add_argument(
        "--public-read",
        action="store_true",
        help="beyond loopback, let searches and reads through without the token (adding and deleting still need it)",
    )
    parser.add_argument(
        "--allowed-host",
        action="append",
        metavar="NAME",
        help="also answer to this Host name (e.g. the name clients use for this machine); repeatable",
    )
    parser.add_argument("--read-only", action="store_true", help="refuse adding and removing images")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..server.app import serve

    serve(
        args.collection,
        host=args.host,
        port=args.port,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        cors_origins=args.cors_origin,
        token=args.token,
        public_read=args.public_read,
        allowed_hosts=args.allowed_host,
        read_only=args.read_only,
    )
    return 0
