"""Print the parameters and multiply-adds of every network (or the ones named), a markdown
table: ``python -m src.tools.complexity [--num_classes N] [--image_size S] [NETWORK ...]``."""
import sys

from src.cli import ArgumentParser, run_main


def main(argv) -> None:
    import mindspore as ms

    from src.models import list_networks
    from src.models.complexity import complexity_table
    parser = ArgumentParser(prog="python -m src.tools.complexity", allow_abbrev=False,
                            description=__doc__.splitlines()[0])
    parser.add_argument("--num_classes", type=int, default=1000)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("names", nargs="*", metavar="NETWORK", help="networks (default: all)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in list_networks()]
    if unknown:
        parser.error(f"unknown network {unknown[0]!r}; with no NETWORK every one is listed")
    ms.set_device("CPU")
    print("| network | params | MMACs |\n| --- | ---: | ---: |")
    for name, params, macs in complexity_table(args.names or list_networks(), args.num_classes,
                                               args.image_size):
        print(f"| {name} | {params:,} | {macs / 1e6:.1f} |", flush=True)


if __name__ == "__main__":
    sys.exit(run_main(main))
