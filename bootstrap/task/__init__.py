"""The task: what the model is asked, how its answers are read, and what earns a reward.

GSM8K is the built-in one (gsm8k.py: its rows; prompts.py: the recipe's prompt; answers.py:
reading numbers and <answer> tags; rewards.py: the five rewards, by name).  This package
depends on the core (config, errors) only, so planning, training and evaluation can all use it.
"""
