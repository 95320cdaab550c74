"""Exercise 3b: train a DreamBooth LoRA with prior preservation (not written yet).

This trainer is the next step of the repository (issue: Training). Until it
lands, download the release LoRA into models/fabric_lora/ (see README).
"""

import sys

if __name__ == "__main__":
    print("error: exercise3b_train_lora.py is not written yet; download the release LoRA into "
          "models/fabric_lora/ for now (see README)", file=sys.stderr)
    sys.exit(1)
