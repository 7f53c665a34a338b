"""``python -m csra_posthoc``: the CLI; also the module ``torchrun ... -m csra_posthoc sweep ...`` launches."""

from .cli.app import main


def _main() -> None:
    main()


if __name__ == "__main__":
    _main()
