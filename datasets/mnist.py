"""Download MNIST into ROOT/MNIST/raw (torchvision's layout) for `--data mnist:ROOT`.

    python datasets/mnist.py data/           # ~12 MB download, then: inrprior train --data mnist:data/ ...
"""
from _common import check, fail, parser

if __name__ == "__main__":
    args = parser(__doc__.splitlines()[0]).parse_args()
    from torchvision.datasets import MNIST

    try:
        for train in (True, False):
            MNIST(str(args.root), train=train, download=True)
    except (OSError, RuntimeError) as e:  # offline, a refused mirror, or a checksum mismatch
        fail(f"could not download MNIST into {args.root}: {e}")
    check(f"mnist:{args.root}")
