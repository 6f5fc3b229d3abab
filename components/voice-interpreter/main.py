"""Greengrass entry point of com.voicebot.VoiceInterpreter: the recipe's Run script starts this file."""

import sys

from voicebot.edge.greengrass import run_component

if __name__ == "__main__":
    sys.exit(run_component("interpreter"))
