"""A stand-in with the training scripts' entry seams (get_args, main, VideoDataset) and nothing
else: prints its parsed arguments as JSON. Activation tests run it in many processes quickly.
It calls ``main(get_args())``, the form where Python fetches ``main`` before the plugins load."""

import argparse
import json
import sys


class VideoDataset:
    pass


def get_args():
    parser = argparse.ArgumentParser(description="echo trainer")
    parser.add_argument("--pretrained_model_name_or_path", default=None)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=720)
    parser.add_argument("--fail", action="store_true", help="raise inside main")
    return parser.parse_args()


def main(args):
    if args.fail:
        raise RuntimeError("echo trainer failing on purpose")
    # One write of the whole line: ranks share the pipe, and an unbuffered print() writes the text
    # and its newline apart, so two ranks' lines could run together.
    sys.stdout.write(json.dumps({"args": vars(args)}, default=str) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main(get_args())
