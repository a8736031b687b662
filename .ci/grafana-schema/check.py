"""Type-check Grafana dashboards against @grafana/schema with the TypeScript compiler.

Usage: python check.py DASHBOARD.json [...]

Each dashboard becomes an object literal typed ``ShippedDashboard`` (see
shipped.ts), so unknown fields and wrong types are compile errors. A
deliberately broken copy of the first dashboard is checked too, and must
fail: the check proves it can fail.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent


def write(name: str, dashboard: object) -> None:
    ident = "".join(c if c.isalnum() else "_" for c in name)
    text = "import type { ShippedDashboard } from '../shipped';\n"
    text += f"export const {ident}: ShippedDashboard = {json.dumps(dashboard, indent=2)};\n"
    (HERE / "generated" / f"{ident}.ts").write_text(text)


def tsc() -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HERE / "node_modules" / ".bin" / "tsc"), "-p", str(HERE)], capture_output=True, text=True
    )


def main(paths: list[str]) -> int:
    if not paths:
        print("usage: check.py DASHBOARD.json [...]", file=sys.stderr)
        return 2
    generated = HERE / "generated"
    shutil.rmtree(generated, ignore_errors=True)
    generated.mkdir()
    dashboards = {pathlib.Path(p).stem: json.loads(pathlib.Path(p).read_text()) for p in paths}
    for name, dashboard in dashboards.items():
        write(name, dashboard)
    result = tsc()
    if result.returncode != 0:
        print(result.stdout + result.stderr)
        print(f"grafana schema: {len(dashboards)} dashboards checked, errors above")
        return 1
    # The check must be able to fail: a field the schema does not know is an error.
    broken = dict(next(iter(dashboards.values())))
    broken["refreshEvery"] = "5s"
    write("broken_on_purpose", broken)
    result = tsc()
    shutil.rmtree(generated, ignore_errors=True)
    if result.returncode == 0 or "refreshEvery" not in result.stdout:
        print("grafana schema: a dashboard with an unknown field passed; the check cannot fail")
        return 1
    print(f"grafana schema: {len(dashboards)} dashboards pass @grafana/schema; a broken one is refused")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
