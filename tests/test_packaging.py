"""The three packages (and the packaged KJV text) work from an installed wheel, not only from the
checkout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_contains_packages_and_profiles(tmp_path: Path) -> None:
    wheel_dir, target = tmp_path / "wheel", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(wheel_dir), str(ROOT)], check=True, capture_output=True)
    (wheel,) = wheel_dir.glob("spikegpt_deploy-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(target), str(wheel)], check=True, capture_output=True)
    probe = (
        "import json, spikegpt_deploy, hw_profiles, converters.torch_capture, "
        "spikegpt_deploy.passes.fold, spikegpt_deploy.profiling, spikegpt_deploy.simulation.lava.procs\n"
        "from spikegpt_deploy.data import load_corpus\n"
        "kjv = load_corpus('kjv')\n"
        "print(json.dumps({'pkg': spikegpt_deploy.__file__, 'hw': hw_profiles.__file__,"
        " 'profiles': hw_profiles.list_profiles(),"
        " 'loihi2': hw_profiles.load_profile('loihi2').energy_pj('synaptic_op'),"
        " 'kjv': [kjv.sha256, len(kjv.train), len(kjv.valid), len(kjv.test)]}))\n")
    # Run outside the checkout so that only the wheel's copies can be imported.
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, check=True,
                         capture_output=True, text=True,
                         env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    import json
    info = json.loads(out.stdout)
    assert info["pkg"].startswith(str(target)) and info["hw"].startswith(str(target))
    assert {"loihi2", "loihi", "spinnaker2", "truenorth", "cmos45nm", "cpu", "gpu"} <= \
        set(info["profiles"])
    assert info["loihi2"] > 0
    # The KJV corpus reads from the wheel's package data, whole and split as in the checkout.
    assert info["kjv"] == ["6f74f5589333c56c263963e6347dba662bae2d96861302e690aaae0b4a855eda",
                           3_308_017, 590_170, 400_052]
