"""`python -m cogvx_ext SCRIPT [args]` runs a training script with plugins (the runner), and
`python -m cogvx_ext COMMAND` is the cogvx-ext command; `accelerate launch -m cogvx_ext SCRIPT`
works where start-up hooks are disabled."""

import sys

from cogvx_ext.cli.main import main

sys.exit(main())
