"""What two runs of the same prompts must agree on, answer by answer."""


def assert_same_answers(a: dict, b: dict) -> None:
    """{key: GenerationOutput}: the same keys, and for each the same text, token count and reason it stopped."""
    assert set(a) == set(b)
    for key in a:
        assert (a[key].text, a[key].new_tokens, a[key].stopped_by) == (b[key].text, b[key].new_tokens,
                                                                      b[key].stopped_by), key
