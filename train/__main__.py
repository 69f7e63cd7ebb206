"""``python -m ecm_edge.train ...`` = ``ecm-edge train ...``; the entry point torchrun runs in every process:

    torchrun --nproc_per_node 2 -m ecm_edge.train --config small --data data/small
"""

import sys

from ecm_edge.cli.main import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]])
