from rlhfkit.data.chat import encode_pair, pad, prompt_text, response_text


def test_prompt_is_exact_prefix_and_response_ends_with_eos(tokenizer):
    enc = encode_pair(tokenizer, "The film was", "surprisingly good.", max_length=256,
                      system_prompt="Continue the review.")
    text = tokenizer.decode(enc.input_ids)
    head = tokenizer.decode(enc.input_ids[: enc.prompt_len])
    assert head.endswith("<|im_start|>assistant\n")
    assert "Continue the review." in head and "The film was" in head
    assert tokenizer.decode(enc.input_ids[enc.prompt_len:]) == "surprisingly good.<|im_end|>"
    assert enc.input_ids[-1] == tokenizer.eos_token_id
    # The whole sequence is what the chat template renders, minus the newline after the turn.
    full = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Continue the review."},
         {"role": "user", "content": "The film was"},
         {"role": "assistant", "content": "surprisingly good."}], tokenize=False)
    assert full == text + "\n"


def test_chat_prompt_messages(tokenizer):
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "rate this film"}]
    assert prompt_text(tokenizer, msgs).count("<|im_start|>") == 5  # system + 3 + assistant
    assert response_text(tokenizer, msgs, "8/10") == "8/10<|im_end|>"


def test_truncation_keeps_the_end_of_the_prompt(tokenizer):
    long_prompt = "word " * 400
    enc = encode_pair(tokenizer, long_prompt, "ok", max_length=64)
    assert len(enc.input_ids) <= 64
    assert tokenizer.decode(enc.input_ids[enc.prompt_len:]) == "ok<|im_end|>"


def test_without_chat_template(tokenizer):
    class Plain:
        chat_template = None
        eos_token = "</s>"

    assert prompt_text(Plain(), "abc") == "abc"
    assert response_text(Plain(), "abc", "def") == " def</s>"


def test_pad_left_and_right():
    ids, mask = pad([[1, 2, 3], [4]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad([[1, 2, 3], [4]], pad_id=0, side="left")
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
