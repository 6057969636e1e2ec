"""Make the demo world config.example.toml points at: the Synapse SQLite files (ten
small files shaped like the user's, quirks included, and a backups folder) in ./demo,
and the three Postgres databases they land in.

    python deploy/demo/make_demo_data.py [--dir demo] [--dsn postgresql://postgres@127.0.0.1:5432/postgres]

Existing files and databases are left alone, so it is safe to run again. `syncd demo`
does all of this in a temporary directory, with a throwaway server if need be.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from syncd.demo.data import TARGET_DATABASES, make_files
from syncd.demo.server import create_databases

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=ROOT / "demo")
    ap.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres",
                    help=f"a database to connect to while creating {', '.join(TARGET_DATABASES)}")
    args = ap.parse_args()
    made = make_files(args.dir)
    created = asyncio.run(create_databases(args.dsn, TARGET_DATABASES, existing="keep"))
    print(f"demo: {len(made)} SQLite file(s) created in {args.dir}, "
          f"Postgres database(s) created: {', '.join(created) or 'none (already there)'}")


if __name__ == "__main__":
    main()
