# Runs ONE MicroPython test function on the unix port. Started by edgefleet's pytest plugin as
#   micropython -X heapsize=H mpy_runner.py MODULE FUNCTION ARGS.json TOKEN
# It prints "EF-PASS-<TOKEN>" only when the function returned; anything else (exception, crash of the
# interpreter, hang killed by the plugin) lacks the marker and counts as a failure.
import sys


def _main():
    modname, fname, argfile, token = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    import json

    with open(argfile) as f:
        kwargs = json.load(f)
    del sys.argv[1:]
    try:
        mod = __import__(modname)
        result = getattr(mod, fname)(**kwargs)
        if result is not None and hasattr(result, "send"):
            import asyncio

            asyncio.run(result)
    except BaseException as e:  # noqa: BLE001 - report everything, including SystemExit
        sys.print_exception(e)
        print("EF-FAIL-" + token)
        sys.exit(1)
    print("EF-PASS-" + token)


_main()
