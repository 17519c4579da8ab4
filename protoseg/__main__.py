"""``python -m protoseg``: the ``protoseg`` command."""

from protoseg.commands import main

main()
