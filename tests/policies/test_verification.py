"""The verification stage: each veto kind fires on a real difference, paraphrases pass."""
from __future__ import annotations

import time

import pytest

from policies.verification import REASONS, Verdict, verify

VETOES = [
    # negation
    ("negation", "Is the pharmacy open on public holidays?", "Is the pharmacy not open on public holidays?"),
    ("negation", "Can I return shoes without a receipt?", "Can I return shoes with a receipt?"),
    ("negation", "Why does my phone charge overnight?", "Why doesn't my phone charge overnight?"),
    ("negation", "Do I need a passport for Ireland?", "Don't I need a passport for Ireland?"),
    ("negation", "Should I ever water cacti in winter?", "Should I never water cacti in winter?"),
    # polarity: antonyms and negative prefixes
    ("polarity", "Is the pharmacy open on public holidays?", "Is the pharmacy closed on public holidays?"),
    ("polarity", "Are pets allowed in the apartment?", "Are pets banned in the apartment?"),
    ("polarity", "How do I increase my daily limit?", "How do I decrease my daily limit?"),
    ("polarity", "Should I buy bonds before a rate hike?", "Should I sell bonds before a rate hike?"),
    ("polarity", "What should I eat before running?", "What should I eat after running?"),
    ("polarity", "How do I gain muscle fast?", "How do I lose muscle fast?"),
    ("polarity", "Is it legal to fly a drone in parks?", "Is it illegal to fly a drone in parks?"),
    ("polarity", "What is a normal blood sugar for a male?", "What is a normal blood sugar for a female?"),
    ("polarity", "How do I enable dark mode?", "How do I disable dark mode?"),
    ("polarity", "Write a short poem about the sea", "Write a long poem about the sea"),
    ("polarity", "Sort the list in ascending order", "Sort the list in descending order"),
    ("polarity", "How to center a div horizontally?", "How to center a div vertically?"),
    ("polarity", "Recommend a book for beginners in statistics", "Recommend a book for experts in statistics"),
    # numbers: digits, words, amounts, units of the same figure
    ("number", "Can I get a refund within 14 days?", "Can I get a refund within 28 days?"),
    ("number", "Is 20 mg of zinc too much?", "Is 40 mg of zinc too much?"),
    ("number", "How much is a two bedroom flat in Leeds?", "How much is a three bedroom flat in Leeds?"),
    ("number", "What is the fee on a $300 transfer?", "What is the fee on a $3,000 transfer?"),
    ("number", "What does the second clause of the lease say?", "What does the fourth clause of the lease say?"),
    ("number", "How do I lose 5 kg before summer?", "How do I lose weight before summer?"),
    ("unit", "Is 100 dollars enough for a week in Lisbon?", "Is 100 euros enough for a week in Lisbon?"),
    # dates and times
    ("date", "Is the dentist open on Thursday?", "Is the dentist open on Friday?"),
    ("date", "What is the forecast for tomorrow?", "What is the forecast for today?"),
    ("date", "Who won the league in 2019?", "Who won the league in 2021?"),
    ("date", "Can I book a table for 7pm?", "Can I book a table for 9pm?"),
    ("date", "What were our sales last month?", "What were our sales this month?"),
    ("date", "Are trains running in August?", "Are trains running in September?"),
    # identifiers
    ("identifier", "What is the status of invoice 7731?", "What is the status of invoice 7713?"),
    ("identifier", "Where is order #55120?", "Where is order #55102?"),
    ("identifier", "Is flight KL643 on time?", "Is flight KL634 on time?"),
    ("identifier", "What does error 0x8024402C mean?", "What does error 0x80244022 mean?"),
    # named entities
    ("entity", "What is the capital of Austria?", "What is the capital of Australia?"),
    ("entity", "How do I open a bank account in Spain?", "How do I open a bank account in Italy?"),
    ("entity", "How do I cancel my Hulu subscription?", "How do I cancel my Disney subscription?"),
    ("entity", "Who founded Microsoft?", "Who founded Google?"),
    ("entity", "What is the income tax rate in Ontario?", "What is the income tax rate?"),
    ("entity", "How do I learn python quickly?", "How do I learn java quickly?"),
    # quantifiers and scope
    ("quantifier", "Are all trains to Leeds delayed?", "Are any trains to Leeds delayed?"),
    ("quantifier", "Can I only pay online?", "Can I pay online?"),
    ("quantifier", "Do both tenants have to sign?", "Does either tenant have to sign?"),
    ("quantifier", "Do most gyms charge a joining fee?", "Do few gyms charge a joining fee?"),
    # comparatives and superlatives
    ("comparative", "Which plan has more storage?", "Which plan has less storage?"),
    ("comparative", "What is the best phone under 300?", "What is the worst phone under 300?"),
    ("comparative", "Which is the cheapest hotel in Porto?", "Which is a cheap hotel in Porto?"),
    ("comparative", "Is rice healthier than pasta?", "Is rice less healthy than pasta?"),
    # direction: the same two things swapped
    ("direction", "How do I move money from savings to checking?", "How do I move money from checking to savings?"),
    ("direction", "How do I convert pounds to kilograms?", "How do I convert kilograms to pounds?"),
    ("direction", "Why is Rust faster than Go?", "Why is Go faster than Rust?"),
    # order: the same words, two of them exchanged around a verb
    ("order", "Why did Germany invade Poland?", "Why did Poland invade Germany?"),
    ("order", "Does a dog chase a cat?", "Does a cat chase a dog?"),
    ("order", "Can a landlord evict a tenant without notice?", "Can a tenant evict a landlord without notice?"),
    ("order", "Do Indian women find Pakistani men attractive?", "Do Pakistani women find Indian men attractive?"),
    ("order", "How many ounces are in a pound?", "How many pounds are in an ounce?"),
    ("order", "Was Caesar killed by Brutus?", "Was Brutus killed by Caesar?"),
    ("order", "Which wine should I pair with cheese?", "Which cheese should I pair with wine?"),
    # the two sides of a relation
    ("polarity", "Who was the father of Alexander the Great?", "Who was the son of Alexander the Great?"),
    ("polarity", "How do I email my landlord about a repair?", "How do I email my tenant about a repair?"),
    ("polarity", "What are the causes of inflation?", "What are the effects of inflation?"),
]

PARAPHRASES = [
    ("What is the capital of France?", "What's the capital city of France?"),
    ("How do tides work?", "How do the tides work?"),
    ("How do I reset my password?", "How can I reset my password?"),
    ("I can't log in to my account", "I cannot log in to my account"),
    ("Why doesn't my laptop charge?", "Why won't my laptop charge?"),
    ("Can I get a refund within 30 days?", "Is a refund possible within thirty days?"),
    ("Is 5 mg of melatonin too much?", "Is 5mg of melatonin too much?"),
    ("Can I pay with seven dollars?", "Can I pay with $7?"),
    ("What is 7.0 times 3?", "What is 7 times three?"),
    ("Where is my order #48211?", "Where's my order #48211?"),
    ("Is the museum open on Monday?", "Is the museum open on Mondays?"),
    ("What is the time difference between London and Tokyo?", "What's the time difference between Tokyo and London?"),
    ("How do I open a bank account in Germany?", "How can I open a German bank account?"),
    ("Who won the World Cup in 2014?", "Which country won the 2014 World Cup?"),
    ("How do I lose weight fast?", "What is the fastest way to lose weight?"),
    ("What is machine learning?", "What is ML?"),
    ("How do I learn Python?", "how do i learn python"),
    ("HOW DO I LEARN PYTHON?", "How do I learn Python?"),
    ("Should I learn Java? Why or why not?", "Should I learn Java?"),
    ("What are the pros and cons of remote work?", "What are the advantages and disadvantages of remote work?"),
    ("Does every room have a balcony?", "Do all rooms have a balcony?"),
    ("How do I switch from Windows to Linux?", "How do I switch to Linux from Windows?"),
    ("How much water should I drink in a day?", "How much water should I drink in 1 day?"),
    ("What are some good books on investing?", "What are good books about investing?"),
    ("Why is the U.S. dollar so strong?", "Why is the US dollar so strong?"),
    # exchanged words that do not change the question
    ("What is the difference between a crocodile and an alligator?",
     "What is the difference between an alligator and a crocodile?"),
    ("What is the difference between real gas and ideal gas?", "What is the difference between an ideal gas and a real gas?"),
    ("Is it better to rent or buy a house?", "Is it better to buy or rent a house?"),
    ("In Python, how do I reverse a list?", "How do I reverse a list in Python?"),
    ("At sea level, what is water's boiling point?", "What is the boiling point of water at sea level?"),
    ("How common is prison rape?", "Is rape in prison common?"),
    ("Are cats similar to dogs as pets?", "Are dogs similar to cats as pets?"),
    ("What is Tokyo's population?", "What is the population of Tokyo?"),
    ("Why do leaves change colour in autumn?", "Why do leaves change color in the fall?"),
    ("Is it OK to pair red wine with cheese?", "Is it OK to pair cheese with red wine?"),
    ("Which is better, tea or coffee?", "Which is better, coffee or tea?"),
]


@pytest.mark.parametrize("reason,query,cached", VETOES)
def test_veto_reason(reason: str, query: str, cached: str) -> None:
    assert verify(query, cached) == Verdict(False, reason)


@pytest.mark.parametrize("query,cached", PARAPHRASES)
def test_paraphrase_passes(query: str, cached: str) -> None:
    assert verify(query, cached) == Verdict(True, "ok")


@pytest.mark.parametrize("reason,query,cached", VETOES)
def test_symmetric(reason: str, query: str, cached: str) -> None:
    assert verify(cached, query) == verify(query, cached)


def test_reasons_are_known_slugs() -> None:
    for reason, query, cached in VETOES:
        assert verify(query, cached).reason in REASONS
    assert all(r.isidentifier() for r in REASONS)


def test_identical_texts_pass() -> None:
    text = "Is the pharmacy not open on 25 December, order #991?"
    assert verify(text, text).ok
    assert verify(text, "  " + text.upper()).ok


def test_both_poles_take_no_side() -> None:
    # a text on both poles of a pair ("pros and cons", "buy or sell") is not a swap
    assert verify("Should I buy or sell gold now?", "Should I sell gold now?").ok


def test_fast_enough() -> None:
    pairs = [(q, c) for _, q, c in VETOES] + PARAPHRASES
    for q, c in pairs:  # warm the per-text cache, as a running proxy has
        verify(q, c)
    start = time.perf_counter()
    rounds = 20
    for _ in range(rounds):
        for q, c in pairs:
            verify(q, c)
    per_call = (time.perf_counter() - start) / (rounds * len(pairs))
    assert per_call < 1e-3  # typical is tens of microseconds; generous for slow CI machines


@pytest.mark.parametrize("a, b, reason", [
    ("What were the causes of World War II?", "What were the causes of World War I?", "number"),
    ("Who were the wives of Henry VIII?", "Who were the wives of Henry VII?", None),
    ("Where did it begin?", "When did it begin?", "question"),
    ("Who invented the telephone?", "When was the telephone invented?", "question"),
    ("How many people live in Paris?", "How much does it cost to live in Paris?", "question"),
])
def test_roman_numerals_and_question_words_veto(a, b, reason):
    v = verify(a, b)
    assert not v.ok
    if reason is not None:
        assert v.reason == reason


@pytest.mark.parametrize("a, b", [
    ("Is World War III coming?", "Is World War 3 coming?"),
    ("Why is the sky blue?", "What makes the sky blue?"),
    ("How do I improve my voice? Can I?", "How do I improve my voice? Can I?"),
    ("Who is the CEO of Apple?", "Who's Apple's CEO?"),
    ("When does the store open?", "What time does the store open?"),
])
def test_one_sided_numerals_and_neutral_question_words_pass(a, b):
    assert verify(a, b).ok
