"""Download CIFAR-10 into ROOT/cifar-10-batches-py (torchvision's layout) for `--data cifar10:ROOT`.

    python datasets/cifar10.py data/         # ~170 MB download, then: inrprior train --data cifar10:data/ ...
"""
from _common import check, fail, parser

if __name__ == "__main__":
    args = parser(__doc__.splitlines()[0]).parse_args()
    from torchvision.datasets import CIFAR10

    try:
        for train in (True, False):
            CIFAR10(str(args.root), train=train, download=True)
    except (OSError, RuntimeError) as e:  # offline, a refused mirror, or a checksum mismatch
        fail(f"could not download CIFAR10 into {args.root}: {e}")
    check(f"cifar10:{args.root}")
