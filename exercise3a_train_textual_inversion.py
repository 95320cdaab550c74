"""Exercise 3a: train a textual-inversion embedding (not written yet).

This trainer is the next step of the repository (issue: Training). Until it
lands, download learned_embeds.safetensors from the release and pass it to
the other scripts with --ti-file.
"""

import sys

if __name__ == "__main__":
    print("error: exercise3a_train_textual_inversion.py is not written yet; use the release's "
          "learned_embeds.safetensors with --ti-file for now", file=sys.stderr)
    sys.exit(1)
