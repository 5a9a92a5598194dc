"""A stand-in with the training scripts' entry seams (get_args, main, VideoDataset) and nothing
else: prints its parsed arguments as JSON. Activation tests run it in many processes quickly."""

import argparse
import json


class VideoDataset:
    pass


def get_args():
    parser = argparse.ArgumentParser(description="echo trainer")
    parser.add_argument("--pretrained_model_name_or_path", default=None)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=720)
    return parser.parse_args()


def main(args):
    print(json.dumps({"args": vars(args)}, default=str))


if __name__ == "__main__":
    main(get_args())
