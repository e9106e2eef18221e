"""Evaluation: reconstruction quality now; distribution metrics and GenEval-style judges later."""
