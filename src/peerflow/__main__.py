"""``python -m peerflow``: the ``peerflow`` command."""

from peerflow.cli import main

if __name__ == "__main__":
    main()
