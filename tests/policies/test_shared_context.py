"""policies.shared_context: what two semantic texts have in common is set aside."""
from __future__ import annotations

from policies.shared_context import differing_parts, segments

CONTEXT = ("The Treaty of Westphalia ended the Thirty Years' War in 1648. It reshaped the political map of "
           "Europe.\nIt is often credited with the idea of state sovereignty.")


def test_segments_split_at_lines_sentences_and_labels():
    assert segments("Context: Some text. More text!\n\nQuestion: Why?") == [
        "Context:", "Some text.", "More text!", "Question:", "Why?"]
    assert segments("Meet at 10:30 on www.example.com or e.g. there") == [
        "Meet at 10:30 on www.example.com or e.g.", "there"]
    assert segments("  \n ") == []


def test_without_shared_segments_there_is_nothing_to_set_aside():
    assert differing_parts("How do I learn Python?", "How can I learn Python?") is None
    assert differing_parts("What is the capital of France?", "What's the capital city of France?") is None


def test_a_shared_context_leaves_the_questions():
    q = f"Context: {CONTEXT}\n\nQuestion: Which war did the treaty end?"
    c = f"Context: {CONTEXT}\n\nQuestion: When was the treaty signed?"
    assert differing_parts(q, c) == ("Which war did the treaty end?", "When was the treaty signed?")


def test_shared_segments_anywhere_are_set_aside_in_order():
    q = "Hi! How do I reset my password? I use the mobile app.\nThanks."
    c = "hi!  How can I reset my password? I use the mobile app. Thanks."  # case and spacing do not count
    assert differing_parts(q, c) == ("How do I reset my password?", "How can I reset my password?")


def test_a_segment_on_one_side_only_is_its_differing_part():
    q = f"{CONTEXT}\nSummarise it. Answer in French."
    c = f"{CONTEXT}\nSummarise it."
    assert differing_parts(q, c) == ("Answer in French.", "")
    assert differing_parts(c, q) == ("", "Answer in French.")


def test_the_same_segments_have_no_differing_part():
    assert differing_parts("Hello there. How are you?", "hello there.\nHow are you?") is None


def test_fillers_are_not_differences():
    q = "What is the capital of Australia?"
    for framed in (f"Quick question: {q}", f"{q} Thanks!", f"Can you tell me: {q}", f"Hi there!\n{q}",
                   f"{q} I'd like to know. 🙏"):
        assert differing_parts(framed, q) is None, framed
    assert differing_parts(f"Quick question: {q}", f"Honest question: {q}") is None
    # shared fillers alone are no shared context: the whole texts are compared as they are
    assert differing_parts("Hi! How do I bake bread?", "Hi! How do I fix a bike?") is None


def test_an_instruction_on_one_side_only_is_a_difference():
    q = "What is the capital of Australia?"
    assert differing_parts(f"{q} Answer in French.", q) == ("Answer in French.", "")
    assert differing_parts(q, f"{q}\nPlease be brief.") == ("", "Please be brief.")
    assert differing_parts(f"Thanks! {q} Reply in JSON.", f"{q} Cheers.") == ("Reply in JSON.", "")


TEMPLATE = "You are the support assistant of Acme Bank and you answer customers politely and briefly the customer asks"


def test_a_template_run_into_the_question_is_set_aside_but_for_a_few_words():
    assert differing_parts(f"{TEMPLATE} how do I reset my password", f"{TEMPLATE} how can I change my PIN") == (
        "asks how do I reset my password", "asks how can I change my PIN")
    # fillers run in, or the same words in other case, are no difference
    assert differing_parts(f"Hey there, {TEMPLATE} how do I reset my password",
                           f"{TEMPLATE} how do I reset my password") is None
    assert differing_parts(f"{TEMPLATE} how do I reset my password", f"{TEMPLATE} How do I reset my password") is None
    # questions that merely begin alike share too few words to count as a template
    assert differing_parts("What is the best way to learn Python quickly?",
                           "What is the best way to learn Python fast?") is None
