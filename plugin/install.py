#!/usr/bin/python3
"""Installs the satellite cosigner plugin into Electrum, or builds its zip for Electrum 4.6+.

    install.py electrum [--electrum-dir DIR] [--regtest | --testnet] [--bridge HOST:PORT]
        Electrum 4.3-4.5: copies the package into the installed Electrum's plugins folder
        (run it with the Python that runs Electrum; Debian: /usr/bin/python3) and enables it
        with `electrum setconfig use_satellite_cosigner true`.
    install.py zip [--out DIR]
        Electrum 4.6+: builds satellite_cosigner-<version>.zip (manifest.json inside); put it
        in <electrum dir>/plugins/ or install it from Electrum's plugin dialog.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE = os.path.join(HERE, "satellite_cosigner")
NAME = "satellite_cosigner"
SOURCES = ("__init__.py", "bridge_client.py", "compat.py", "core.py", "errors.py", "stages.py",
           "wallet_keys.py", "qt.py", "manifest.json")


def electrum_command(args):
    exe = shutil.which("electrum") or "/usr/bin/electrum"
    cmd = [exe]
    if args.regtest:
        cmd.append("--regtest")
    if args.testnet:
        cmd.append("--testnet")
    if args.electrum_dir:
        cmd += ["-D", args.electrum_dir]
    return cmd + ["--offline"]


def install_electrum(args):
    try:
        import electrum.plugins
    except ImportError:
        sys.exit("Electrum's library is not importable by %s; run this with the Python that "
                 "runs Electrum (Debian: /usr/bin/python3)." % sys.executable)
    target = os.path.join(os.path.dirname(electrum.plugins.__file__), NAME)
    if os.path.isdir(target):
        shutil.rmtree(target)
    os.makedirs(target)
    for name in SOURCES:
        shutil.copy2(os.path.join(PACKAGE, name), os.path.join(target, name))
    print("installed into", target)
    settings = [("use_" + NAME, "true")]
    if args.bridge:
        settings.append(("satcosign_bridge", args.bridge))
    for key, value in settings:
        subprocess.run(electrum_command(args) + ["setconfig", key, value], check=True,
                       stdout=subprocess.DEVNULL)
        print("electrum setconfig", key, value)


def build_zip(args):
    with open(os.path.join(PACKAGE, "manifest.json")) as f:
        version = json.load(f)["version"]
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "%s-%s.zip" % (NAME, version))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name in SOURCES:
            z.write(os.path.join(PACKAGE, name), "%s/%s" % (NAME, name))
    print(path)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("electrum", help="install into Electrum 4.3-4.5 and enable it")
    e.add_argument("--electrum-dir", help="Electrum's data folder (default ~/.electrum)")
    net = e.add_mutually_exclusive_group()
    net.add_argument("--regtest", action="store_true")
    net.add_argument("--testnet", action="store_true")
    e.add_argument("--bridge", help="the bridge's host:port to set")
    z = sub.add_parser("zip", help="build the plugin zip for Electrum 4.6+")
    z.add_argument("--out", default=os.path.join(HERE, "dist"))
    args = p.parse_args()
    install_electrum(args) if args.command == "electrum" else build_zip(args)


if __name__ == "__main__":
    main()
