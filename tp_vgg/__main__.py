import sys

from tp_vgg.cli import main

if __name__ == "__main__":
    sys.exit(main())
