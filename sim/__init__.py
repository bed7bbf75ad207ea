"""Closed-loop simulation (installed as `autoprune_sim`): simulator bridges in their own processes that speak
the CARLA ROS topic contract, routes, driving metrics and the closed-loop evaluator. Never imported by the node.
"""
