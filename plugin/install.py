#!/usr/bin/python3
"""Installs the satellite cosigner plugin into Electrum, or builds its zip for Electrum 4.6+.

Electrum 4.3-4.5 (plugins are packages inside Electrum's own folder):

    install.py electrum [--user NAME] [--electrum-dir DIR] [--regtest | --testnet] [--bridge H:P]
        Copies the package into the installed Electrum's plugins folder (as root where Electrum
        is a system package; run it with the Python that runs Electrum, Debian's
        /usr/bin/python3), then enables it for the user who runs Electrum: that user itself,
        or with --user NAME when run as root (sudo or not), or in --electrum-dir.

Electrum 4.6+ (external plugins are zips, authorized with a plugins password whose public
key only root can set):

    install.py zip [--out DIR]
        Builds satellite_cosigner-<version>.zip (manifest.json inside).
    install.py keyfile --password-file F          (as root, once per machine)
        Writes /etc/electrum/plugins_key from the plugins password, as Electrum's own setup
        does (root-owned, mode 644; Electrum trusts it only so).
    install.py authorize --zip Z --password-file F [--electrum-dir DIR] [--regtest | --testnet]
        (as the user who runs Electrum, with the Python that runs it) Copies the zip into
        <electrum dir>/plugins/, signs its hash with the plugins password, and enables it:
        what Electrum's plugin dialog does. Restart Electrum; the menu appears then.
"""
import argparse
import hashlib
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


KEYFILE = "/etc/electrum/plugins_key"  # where Electrum 4.6+ reads the plugins key
KEY_VERSION = 1  # Electrum's PLUGIN_PASSWORD_VERSION


def electrum_config(args):
    """The config of the Electrum whose library runs this script, for the network and data
    folder asked."""
    from electrum import constants
    from electrum.simple_config import SimpleConfig
    if args.regtest:
        net = "regtest"
    elif args.testnet:
        net = "testnet"
    else:
        net = None
    if net:
        if hasattr(constants, "set_" + net):
            getattr(constants, "set_" + net)()  # Electrum 4.3-4.5
        else:
            {"regtest": constants.BitcoinRegtest,  # 4.6+
             "testnet": constants.BitcoinTestnet}[net].set_as_network()
    options = {net: True} if net else {}
    if args.electrum_dir:
        options["electrum_path"] = args.electrum_dir
    return SimpleConfig(options)


def enable(args):
    """Enables the plugin (and sets the bridge) in the config of the user running this."""
    config = electrum_config(args)
    config.set_key("use_" + NAME, True, save=True)
    print("enabled", "use_" + NAME, "in", config.path if hasattr(config, "path") else
          config.electrum_path())
    if args.bridge:
        config.set_key("satcosign_bridge", args.bridge, save=True)
        print("bridge", args.bridge)


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
    if args.user and os.geteuid() == 0:
        # Enabling is a setting of the user who runs Electrum, not root's.
        cmd = ["runuser", "-u", args.user, "--", sys.executable, os.path.abspath(__file__),
               "enable"]
        if args.regtest:
            cmd.append("--regtest")
        if args.testnet:
            cmd.append("--testnet")
        if args.electrum_dir:
            cmd += ["--electrum-dir", args.electrum_dir]
        if args.bridge:
            cmd += ["--bridge", args.bridge]
        subprocess.run(cmd, check=True)
    else:
        enable(args)


def read_password(path):
    with open(path) as f:
        password = f.read().rstrip("\n")
    if not password:
        sys.exit("the plugins password in %s is empty" % path)
    return password


def derive_privkey(password, salt):
    """The plugins key, as Electrum derives it (PBKDF2-HMAC-SHA256, 100,000 rounds)."""
    import electrum_ecc
    secret = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations=10**5)
    return electrum_ecc.ECPrivkey(secret)


def write_keyfile(args):
    if os.geteuid() != 0:
        sys.exit("keyfile: run as root; Electrum trusts %s only when root owns it" % KEYFILE)
    if os.path.exists(KEYFILE) and not args.replace:
        sys.exit("%s exists; --replace to write a new one (plugins authorized with the old "
                 "password must be authorized again)" % KEYFILE)
    salt = os.urandom(32)
    pubkey = derive_privkey(read_password(args.password_file), salt).get_public_key_bytes()
    os.makedirs(os.path.dirname(KEYFILE), exist_ok=True)
    os.chmod(os.path.dirname(KEYFILE), 0o755)
    with open(KEYFILE, "w") as f:
        f.write((bytes([KEY_VERSION]) + salt + pubkey).hex())
    os.chmod(KEYFILE, 0o644)
    print("wrote", KEYFILE)


def authorize(args):
    try:
        import electrum  # noqa: F401
    except ImportError:
        sys.exit("Electrum's library is not importable by %s; run this with the Python that "
                 "runs Electrum" % sys.executable)
    st = os.stat(KEYFILE) if os.path.exists(KEYFILE) else None
    if st is None or st.st_uid != 0 or os.access(KEYFILE, os.W_OK):
        sys.exit("%s must exist, be owned by root and not be writable by you (set it with "
                 "`install.py keyfile` as root); Electrum ignores it otherwise" % KEYFILE)
    with open(KEYFILE) as f:
        key = bytes.fromhex(f.read().strip())
    if key[0] != KEY_VERSION:
        sys.exit("%s: unknown key version %d" % (KEYFILE, key[0]))
    salt, pubkey = key[1:33], key[33:]
    privkey = derive_privkey(read_password(args.password_file), salt)
    if privkey.get_public_key_bytes() != pubkey:
        sys.exit("the plugins password does not match %s" % KEYFILE)
    config = electrum_config(args)
    plugins_dir = os.path.join(config.electrum_path(), "plugins")
    os.makedirs(plugins_dir, exist_ok=True)
    target = os.path.join(plugins_dir, os.path.basename(args.zip))
    shutil.copyfile(args.zip, target)
    with open(target, "rb") as f:
        zip_hash = hashlib.sha256(f.read()).digest()
    config.set_key("plugins.%s.authorized" % NAME, privkey.ecdsa_sign(zip_hash).hex())
    config.set_key("plugins.%s.enabled" % NAME, True, save=True)
    print("installed and authorized", target, "; restart Electrum to load it")


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
    e.add_argument("--user", default=os.environ.get("SUDO_USER"),
                   help="as root: the user who runs Electrum (default: the sudo user)")
    net = e.add_mutually_exclusive_group()
    net.add_argument("--regtest", action="store_true")
    net.add_argument("--testnet", action="store_true")
    e.add_argument("--bridge", help="the bridge's host:port to set")
    n = sub.add_parser("enable", help="as the user: enable the installed 4.3-4.5 plugin")
    n.add_argument("--electrum-dir", help="Electrum's data folder (default ~/.electrum)")
    nnet = n.add_mutually_exclusive_group()
    nnet.add_argument("--regtest", action="store_true")
    nnet.add_argument("--testnet", action="store_true")
    n.add_argument("--bridge", help="the bridge's host:port to set")
    z = sub.add_parser("zip", help="build the plugin zip for Electrum 4.6+")
    z.add_argument("--out", default=os.path.join(HERE, "dist"))
    k = sub.add_parser("keyfile", help="as root: set Electrum 4.6+'s plugins key")
    k.add_argument("--password-file", required=True)
    k.add_argument("--replace", action="store_true")
    a = sub.add_parser("authorize", help="as the user: install, authorize and enable the zip")
    a.add_argument("--zip", required=True)
    a.add_argument("--password-file", required=True)
    a.add_argument("--electrum-dir", help="Electrum's data folder (default ~/.electrum)")
    anet = a.add_mutually_exclusive_group()
    anet.add_argument("--regtest", action="store_true")
    anet.add_argument("--testnet", action="store_true")
    args = p.parse_args()
    {"electrum": install_electrum, "enable": enable, "zip": build_zip,
     "keyfile": write_keyfile, "authorize": authorize}[args.command](args)


if __name__ == "__main__":
    main()
