"""``generation``: responses of every policy, teacher-forced log-probs, true values.

Namespace ``generation`` (datasets and parameters keep their names); tag ``api`` on the nodes that
send requests to the model backend (they cost money on a hosted API).
"""

from kedro.pipeline import Node, Pipeline

from .nodes import (
    check_teacher_forcing,
    compute_true_values,
    generate_responses,
    measure_echo_noise,
    teacher_force_logged_responses,
)

POLICY_PARAMS = ["params:backend", "params:policies", "params:policy_defaults"]


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                generate_responses,
                ["prompts", *POLICY_PARAMS, "params:generation"],
                "responses",
                name="generate_responses",
                tags=["api"],
            ),
            Node(
                teacher_force_logged_responses,
                ["prompts", "responses", *POLICY_PARAMS, "params:logging_policy"],
                "logprobs",
                name="teacher_force_logged_responses",
                tags=["api"],
            ),
            Node(
                measure_echo_noise,
                ["prompts", "responses", *POLICY_PARAMS, "params:logging_policy"],
                "echo_noise",
                name="measure_echo_noise",
                tags=["api"],
            ),
            Node(
                check_teacher_forcing,
                ["responses", "logprobs", "params:logging_policy", "echo_noise"],
                "teacher_forcing_check",
                name="check_teacher_forcing",
            ),
            # Only a simulated world knows true values: no request is sent, so no `api` tag.
            Node(compute_true_values, ["prompts", *POLICY_PARAMS], "policy_truth", name="compute_true_values"),
        ],
        namespace="generation",
        prefix_datasets_with_namespace=False,
    )
