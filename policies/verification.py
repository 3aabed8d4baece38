"""Verification of a semantic-cache candidate before it is served.

A bi-encoder similarity cannot tell "Is the pharmacy open on holidays?" from "Is the
pharmacy closed on holidays?", nor "invoice 7731" from "invoice 7713". `verify(query,
cached)` compares the features of the two texts that change an answer and vetoes the
candidate when they differ. It is pure, deterministic and explainable: a veto carries
one short, stable reason slug, used as the `X-Cache-Verdict` header and a metric label.

Reasons, in the order they are checked:

    negation     a negation cue (not, no, never, n't, without, cannot...) on one side only
    polarity     opposite poles of an antonym pair (open/closed, buy/sell, gain/lose,
                 male/female, legal/illegal, un-/in-/dis- prefixed forms...)
    identifier   order, invoice, ticket numbers; mixed letter-digit codes (A320, 7731-B)
    date         years, months, weekdays, clock times, today/tomorrow, next/last week
    number       quantities, amounts, ordinals ("7", "seven", "7.0", "$7", "7th")
    unit         the same quantity in another unit or currency ($100 vs EUR 100, km/miles)
    entity       names, places, products, acronyms: a swap, or a place added on one side
    quantifier   all/every vs some/any vs none, "only" on one side, both vs either
    comparative  opposite comparatives (more/less, best/worst), or a degree against its
                 base (cheapest vs cheap)
    direction    the same two things swapped around from/to/than/into
                 ("from savings to checking" vs "from checking to savings")
    order        the same words with two of them exchanged around one to three others
                 ("Why did Germany invade Poland?" vs "Why did Poland invade Germany?"),
                 or side by side across the same one-way link ("ounces in a pound" vs
                 "pounds in an ounce"), unless the text asks about a symmetric relation
                 (difference, between, compare, similar) or one of the two is a gradable
                 adjective moved by a question's inversion ("How common is X?" vs "Is X common?")
    ok           nothing found: the candidate may be served

A feature counts only when it *differs*: word order, casing, punctuation, contractions,
"what's"/"what is", "How do I"/"How can I", singular/plural do not. Features present on
one side only count where dropping them changes the answer (a negation, a number, a
date, an identifier, "only", a place); an unmatched person or product name counts only
when the other side names a different one (a swap). The check is symmetric:
`verify(a, b) == verify(b, a)`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["Verdict", "verify", "REASONS"]

REASONS = (
    "ok", "negation", "polarity", "identifier", "date", "number", "unit", "entity",
    "quantifier", "comparative", "direction", "order", "question",
)


@dataclass(frozen=True, slots=True)
class Verdict:
    """`ok` is True when the candidate may be served; `reason` is a slug from REASONS."""

    ok: bool
    reason: str


OK = Verdict(True, "ok")


# --------------------------------------------------------------------------- lexicons

_STOP = frozenset("""
a an the and or but if then else of to in on at by for with from into onto over under
about as is are was were be been being am do does did doing done have has had having
will would shall should can could may might must i me my mine we us our ours you your
yours he him his she her hers it its they them their theirs this that these those there
here what which who whom whose when where why how whether please thanks thank hi hello
dear ok okay yes so than too very just also even still yet some any all s t
""".split())

# Capitalised words that are not names even mid-sentence.
_NOT_NAMES = _STOP | frozenset("""
i im ive id ill what why how when where which who whom whose is are was were do does did
can could should would will shall may might must if please thanks hey hi hello ok okay
yes no not mr mrs ms dr sir madam god q a eg ie etc vs
""".split())

_NEGATION = frozenset("not no never nobody nothing nowhere neither nor without none noone".split())

_NUMBER_WORDS = {
    "zero": 0, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
    "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60,
    "seventy": 70, "eighty": 80, "ninety": 90, "dozen": 12, "couple": 2,
}
_ORDINAL_WORDS = {
    "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7,
    "eighth": 8, "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12, "thirteenth": 13,
    "fifteenth": 15, "twentieth": 20, "thirtieth": 30, "hundredth": 100,
}
_DECADE_WORDS = {"twenties": 20, "thirties": 30, "forties": 40, "fifties": 50,
                 "sixties": 60, "seventies": 70, "eighties": 80, "nineties": 90, "teens": 13}
# "one", "first", "once", "single": may match a 1 on the other side, never create a difference
# on their own ("Which one is better?" is not about a quantity).
_WEAK_ONE = frozenset("one first once single".split())
_MULTIPLIERS = {"hundred": 100, "thousand": 1_000, "million": 1_000_000,
                "billion": 1_000_000_000, "trillion": 1_000_000_000_000,
                "k": 1_000, "m": 1_000_000, "mn": 1_000_000, "bn": 1_000_000_000, "b": 1_000_000_000,
                "lakh": 100_000, "lakhs": 100_000, "crore": 10_000_000, "crores": 10_000_000}

_UNITS = {
    # canonical unit per spelling; a quantity compares as (value, unit)
    "$": "usd", "usd": "usd", "dollar": "usd", "dollars": "usd", "bucks": "usd",
    "€": "eur", "eur": "eur", "euro": "eur", "euros": "eur",
    "£": "gbp", "gbp": "gbp", "pound": "gbp", "pounds": "gbp", "quid": "gbp",
    "¥": "jpy", "yen": "jpy", "₹": "inr", "inr": "inr", "rs": "inr", "rupee": "inr", "rupees": "inr",
    "aed": "aed", "dirham": "aed", "dirhams": "aed", "cad": "cad", "aud": "aud",
    "km": "km", "kilometer": "km", "kilometers": "km", "kilometre": "km", "kilometres": "km",
    "mi": "mile", "mile": "mile", "miles": "mile",
    "kg": "kg", "kilo": "kg", "kilos": "kg", "kilogram": "kg", "kilograms": "kg",
    "lb": "lb", "lbs": "lb",
    "g": "g", "gram": "g", "grams": "g", "mg": "mg", "milligram": "mg", "milligrams": "mg",
    "mcg": "mcg", "ml": "ml", "l": "l", "liter": "l", "liters": "l", "litre": "l", "litres": "l",
    "gb": "gb", "mb": "mb", "tb": "tb", "kb": "kb", "ghz": "ghz", "mhz": "mhz",
    "%": "pct", "percent": "pct", "percentage": "pct",
    "hour": "h", "hours": "h", "hr": "h", "hrs": "h", "h": "h",
    "minute": "min", "minutes": "min", "mins": "min", "min": "min",
    "second": "s", "seconds": "s", "sec": "s", "secs": "s",
    "day": "day", "days": "day", "week": "week", "weeks": "week", "month": "month",
    "months": "month", "year": "year", "years": "year", "yrs": "year",
    "cm": "cm", "mm": "mm", "inch": "in", "inches": "in", "ft": "ft", "foot": "ft", "feet": "ft",
    "meter": "m", "meters": "m", "metre": "m", "metres": "m",
}
# Units whose absence on the other side is not a conflict ("in 3 days" vs "in 3").
_UNIT_CURRENCY = frozenset("usd eur gbp jpy inr aed cad aud".split())

_ID_CUES = frozenset("""
order invoice ticket case account acct ref reference id no number confirmation booking
reservation flight room gate seat table tracking serial model version ver v build
extension ext pnr item sku policy claim transaction txn receipt bug issue pr pin code
error zip postcode route bus platform train
""".split())

_MONTHS = {
    "january": "jan", "jan": "jan", "february": "feb", "feb": "feb", "march": "mar",
    "mar": "mar", "april": "apr", "apr": "apr", "may": "may", "june": "jun", "jun": "jun",
    "july": "jul", "jul": "jul", "august": "aug", "aug": "aug", "september": "sep",
    "sept": "sep", "sep": "sep", "october": "oct", "oct": "oct", "november": "nov",
    "nov": "nov", "december": "dec", "dec": "dec",
}
# Month names that are also common words: a month only next to a number or capitalised mid-text.
_AMBIGUOUS_MONTHS = frozenset("may march mar jan jun jul aug sep oct nov dec feb apr sept".split())
_WEEKDAYS = {
    "monday": "mon", "mon": "mon", "mondays": "mon", "tuesday": "tue", "tue": "tue",
    "tues": "tue", "tuesdays": "tue", "wednesday": "wed", "wed": "wed", "wednesdays": "wed",
    "thursday": "thu", "thu": "thu", "thurs": "thu", "thursdays": "thu", "friday": "fri",
    "fri": "fri", "fridays": "fri", "saturday": "sat", "sat": "sat", "saturdays": "sat",
    "sunday": "sun", "sun": "sun", "sundays": "sun",
}
_AMBIGUOUS_WEEKDAYS = frozenset("mon tue wed thu fri sat sun tues thurs".split())
_RELATIVE_DAYS = {
    "today": "today", "tonight": "today", "tomorrow": "tomorrow", "yesterday": "yesterday",
    "weekend": "weekend", "weekends": "weekend", "weekday": "weekday", "weekdays": "weekday",
    "morning": "morning", "mornings": "morning", "afternoon": "afternoon",
    "evening": "evening", "evenings": "evening", "overnight": "night", "midnight": "night",
    "noon": "noon", "midday": "noon", "christmas": "christmas", "xmas": "christmas",
    "easter": "easter", "thanksgiving": "thanksgiving", "summer": "summer",
    "winter": "winter", "autumn": "autumn", "spring": "spring",
}
_PERIODS = frozenset("day week weekend month year quarter semester term season decade century".split())
_PERIOD_MODIFIERS = {"next": "next", "last": "last", "previous": "last", "past": "last",
                     "this": "this", "current": "this", "coming": "next", "upcoming": "next"}

# Antonym pairs: (pole A words, pole B words). A text on both poles ("pros and cons")
# takes no side. Inflections are generated (see _inflect).
_POLARITY_PAIRS: tuple[tuple[str, str], ...] = (
    ("open reopen", "close closed shut"),
    ("allow permit legal authorize authorise accept approve", "ban forbid forbidden prohibit illegal unauthorized reject deny decline refuse"),
    ("before prior earlier", "after later"),
    ("buy purchase", "sell"),
    ("increase raise rise grow boost gain", "decrease reduce lower drop cut decline lose loss shrink"),
    ("import", "export"), ("upload", "download"), ("inbound", "outbound"),
    ("add attach insert", "remove delete detach erase"),
    ("enable activate turnon", "disable deactivate turnoff"),
    ("start begin beginning launch", "stop end finish quit"),
    ("win victory", "defeat"),
    ("male man men boy boys husband father dad son brother boyfriend king gentleman gentlemen masculine",
     "female woman women girl girls wife mother mom mum daughter sister girlfriend queen lady ladies feminine"),
    ("min minimum lowest", "max maximum highest"),
    ("high", "low"), ("hot warm", "cold cool"), ("cheap inexpensive affordable", "expensive costly pricey"),
    ("fast quick quickly rapid", "slow slowly"), ("strong", "weak"), ("rich wealthy", "poor"),
    ("early", "late"), ("old", "young new"), ("positive", "negative"),
    ("pro pros advantage benefit", "con cons disadvantage drawback downside"),
    ("true", "false"), ("correct", "wrong incorrect"), ("love", "hate"),
    ("include", "exclude"), ("inside indoor indoors", "outside outdoor outdoors"),
    ("internal", "external"), ("above", "below"), ("upper", "lower"),
    ("encrypt", "decrypt"), ("push", "pull"), ("send", "receive"),
    ("borrow", "lend"), ("deposit", "withdraw withdrawal"), ("credit", "debit"),
    ("profit", "loss"), ("asset", "liability"), ("arrive arrival", "depart departure"),
    ("entry enter entrance", "exit"), ("login signin", "logout signout"),
    ("north northern", "south southern"), ("east eastern", "west western"),
    ("same similar", "different"), ("public", "private"), ("online", "offline"),
    ("wired", "wireless"), ("manual", "automatic"), ("input", "output"),
    ("full", "empty"), ("wet", "dry"), ("light", "dark heavy"), ("safe", "dangerous unsafe"),
    ("healthy", "unhealthy"), ("success succeed", "fail failure"), ("pass", "fail"),
    ("include", "without"), ("day", "night"), ("summer", "winter"), ("spring", "autumn fall"),
    ("morning", "evening"), ("plus", "minus"), ("maximize maximise", "minimize minimise"),
    ("overestimate", "underestimate"), ("overrated", "underrated"), ("overweight", "underweight"),
    ("hire", "fire"), ("join", "leave"), ("mount", "unmount"), ("lock", "unlock"),
    ("charge", "refund"), ("accept", "decline"), ("approve", "disapprove"),
    ("hardest", "easiest"), ("hard difficult", "easy"),
    ("long lengthy", "short brief"), ("ascending", "descending"), ("horizontal horizontally", "vertical vertically"),
    ("beginner novice", "expert advanced"), ("big large huge", "small little tiny"), ("left", "right"),
    ("top", "bottom"), ("uppercase", "lowercase"), ("compress", "decompress"), ("encode", "decode"),
    ("serialize serialise", "deserialize deserialise"), ("synchronous sync", "asynchronous async"),
    ("odd", "even"), ("forward forwards", "backward backwards"), ("thin", "thick"), ("narrow", "wide"),
    ("inhale", "exhale"), ("prefix", "suffix"), ("freeze", "thaw defrost unfreeze"),
    # the two sides of a relation: "Who was the father of X?" asks for another person than "the son of X"
    ("parent parents father mother dad mom mum ancestor ancestors", "child children son daughter kid kids descendant descendants"),
    ("teacher teachers professor", "student students pupil pupils"), ("doctor doctors physician", "patient patients"),
    ("employer employers boss", "employee employees"), ("landlord landlords", "tenant tenants"),
    ("predator predators", "prey"), ("host hosts", "guest guests"), ("sender", "recipient receiver"),
    ("lender lenders creditor creditors", "borrower borrowers debtor debtors"), ("winner winners", "loser losers"),
    ("cause causes", "effect effects consequence consequences"),
)

# Opposite comparatives and superlatives.
_COMPARATIVE_PAIRS: tuple[tuple[str, str], ...] = (
    ("more", "less fewer"), ("most", "least fewest"), ("better", "worse"), ("best", "worst"),
    ("bigger larger greater", "smaller lesser"), ("biggest largest greatest", "smallest"),
    ("higher", "lower"), ("highest", "lowest"), ("longer", "shorter"), ("longest", "shortest"),
    ("faster quicker", "slower"), ("fastest quickest", "slowest"),
    ("cheaper", "pricier costlier"), ("cheapest", "priciest costliest"),
    ("older", "younger newer"), ("oldest", "youngest newest"), ("earlier", "later"),
    ("earliest", "latest"), ("stronger", "weaker"), ("strongest", "weakest"),
    ("easier", "harder"), ("easiest", "hardest"), ("safer", "riskier"), ("safest", "riskiest"),
    ("richer", "poorer"), ("richest", "poorest"), ("hotter warmer", "colder cooler"),
    ("hottest warmest", "coldest coolest"), ("heavier", "lighter"), ("heaviest", "lightest"),
    ("closer nearer", "farther further"), ("closest nearest", "farthest furthest"),
    ("overrated", "underrated"),
)

# Gradable adjectives whose degree (base / -er / -est) changes a question.
_GRADABLE = tuple("""
cheap fast slow big small large high low long short old young new early late easy hard
safe strong weak rich poor hot cold warm cool heavy light close near far quick great smart
tall deep wide narrow thin thick fat healthy happy busy dark bright loud quiet clean simple
tiny huge nice hard pretty rare common popular expensive powerful efficient effective
reliable secure important difficult profitable beautiful dangerous interesting useful
""".split())

_QUANTIFIER_CLASSES = {
    "all": "all", "every": "all", "each": "all", "everyone": "all", "everybody": "all",
    "everything": "all", "always": "all", "entire": "all", "whole": "all",
    "some": "some", "any": "some", "anyone": "some", "anybody": "some", "anything": "some",
    "someone": "some", "somebody": "some", "something": "some", "sometimes": "some",
    "none": "none", "nobody": "none", "nothing": "none", "noone": "none", "never": "none",
    "both": "both", "either": "either", "neither": "none",
    "many": "many", "most": "most", "few": "few", "several": "many", "majority": "most",
}
_ONLY = frozenset("only solely exclusively".split())

# Words after which argument order matters ("from A to B", "A faster than B");
# "vs"/"versus"/"and" are symmetric and are not listed.
_DIRECTION_CUES = frozenset("than to from into onto over".split())
_DETERMINERS = frozenset("the a an my your our their his her its this that these those".split())

# Places and names people type in lower case. Keys are what a text is normalised to.
_GAZETTEER_WORDS = frozenset("""
afghanistan albania algeria argentina armenia australia austria azerbaijan bahrain
bangladesh belarus belgium bhutan bolivia bosnia brazil bulgaria cambodia cameroon canada
chile china colombia croatia cuba cyprus czech czechia denmark egypt estonia ethiopia
fiji finland france georgia germany ghana greece guatemala haiti honduras hungary iceland
india indonesia iran iraq ireland israel italy jamaica japan jordan kazakhstan kenya kuwait
laos latvia lebanon libya lithuania luxembourg madagascar malaysia maldives mali malta
mexico moldova monaco mongolia montenegro morocco mozambique myanmar namibia nepal
netherlands holland nicaragua niger nigeria norway oman pakistan palestine panama paraguay
peru philippines poland portugal qatar romania russia rwanda scotland senegal serbia
singapore slovakia slovenia somalia spain sudan sweden switzerland syria taiwan tajikistan
tanzania thailand tunisia turkey uganda ukraine uruguay uzbekistan venezuela vietnam wales
yemen zambia zimbabwe england britain europe asia africa antarctica america oceania
american americans indian indians chinese japanese german germans french british english
spanish italian russian russians korean koreans canadian canadians australian mexican
brazilian portuguese dutch swedish norwegian danish finnish polish greek turkish arabic arab
arabs persian hindi urdu bengali tamil telugu marathi gujarati punjabi kannada malayalam
hebrew latin swahili pakistani pakistanis african europeans european asian asians irish
scottish welsh israeli iranian iraqi egyptian nigerian kenyan vietnamese thai indonesian
filipino malaysian singaporean bangladeshi nepali sri
london paris berlin madrid rome tokyo beijing shanghai delhi mumbai bombay bangalore
bengaluru chennai madras kolkata calcutta hyderabad pune ahmedabad jaipur lucknow chandigarh
kochi noida gurgaon gurugram karachi lahore islamabad dhaka kathmandu colombo dubai
abu doha riyadh jeddah cairo istanbul ankara moscow kiev kyiv warsaw prague vienna budapest
amsterdam brussels zurich geneva stockholm oslo copenhagen helsinki dublin edinburgh
manchester liverpool birmingham lisbon barcelona milan venice athens toronto vancouver
montreal ottawa calgary sydney melbourne brisbane perth auckland singapore bangkok jakarta
manila seoul hanoi taipei boston chicago seattle denver dallas houston austin atlanta miami
phoenix philadelphia detroit portland vegas orlando nashville pittsburgh baltimore
brooklyn manhattan hollywood silicon california texas florida arizona nevada oregon
washington utah colorado ohio michigan illinois indiana iowa kansas kentucky louisiana maine
maryland massachusetts minnesota mississippi missouri montana nebraska alabama alaska
arkansas connecticut delaware hawaii idaho wisconsin wyoming vermont virginia tennessee
oklahoma carolina dakota pennsylvania kerala karnataka maharashtra gujarat punjab bihar
rajasthan telangana goa assam odisha bengal ontario quebec alberta
""".split())
# Names people type in lower case; a swap counts, an addition on one side does not.
_GAZETTEER_NAMES = frozenset("""
google facebook amazon microsoft netflix uber lyft twitter instagram whatsapp youtube quora
linkedin tesla samsung paypal apple iphone ipad ipod macbook android ios windows linux
ubuntu macos mac chrome firefox safari excel outlook gmail yahoo snapchat tiktok reddit
spotify airbnb oracle ibm intel amd nvidia cisco infosys tcs wipro accenture deloitte
flipkart paytm jio airtel vodafone verizon nokia sony huawei xiaomi oneplus lenovo dell hp
asus acer bmw audi toyota honda hyundai ford mercedes volkswagen nike adidas walmart
starbucks mcdonalds visa mastercard bitcoin ethereum python java javascript typescript php
ruby kotlin scala perl haskell golang rust swift matlab html css sql mysql postgresql
mongodb django flask react angular vue nodejs node docker kubernetes aws azure gcp
hindu hinduism muslim muslims islam christian christians christianity jewish jews jew judaism
buddhist buddhism sikh catholic protestant
trump obama clinton hillary modi gandhi nehru putin biden messi ronaldo
""".split())

_GAZETTEER_PHRASES = {
    "new york": "new_york", "new york city": "new_york", "nyc": "new_york",
    "new jersey": "new_jersey", "new delhi": "delhi", "new zealand": "new_zealand",
    "south korea": "south_korea", "north korea": "north_korea", "south africa": "south_africa",
    "sri lanka": "sri_lanka", "saudi arabia": "saudi_arabia", "hong kong": "hong_kong",
    "los angeles": "los_angeles", "san francisco": "san_francisco", "san diego": "san_diego",
    "san jose": "san_jose", "las vegas": "vegas", "united states of america": "usa",
    "united states": "usa", "the states": "usa", "u.s.a.": "usa", "u.s.a": "usa",
    "u.s.": "usa", "united kingdom": "uk", "great britain": "uk", "u.k.": "uk",
    "united arab emirates": "uae", "abu dhabi": "abu_dhabi", "czech republic": "czechia",
    "silicon valley": "silicon_valley", "tamil nadu": "tamil_nadu",
    "uttar pradesh": "uttar_pradesh", "west bengal": "bengal", "north carolina": "north_carolina",
    "south carolina": "south_carolina", "north dakota": "north_dakota",
    "south dakota": "south_dakota", "west virginia": "west_virginia",
    "c++": "cplusplus", "c#": "csharp", "f#": "fsharp", ".net": "dotnet",
}
# Phrases with punctuation, matched in the raw text rather than on tokens.
_PUNCTUATED_PHRASES = {k: v for k, v in _GAZETTEER_PHRASES.items() if not k.replace(" ", "").isalpha()}
_ALIASES = {"us": "usa", "america": "usa", "states": "usa", "uk": "uk", "britain": "uk",
            "jewish": "jew", "jews": "jew", "muslims": "muslim", "christians": "christian",
            "french": "france", "chinese": "china", "dutch": "netherlands", "swiss": "switzerland",
            "greek": "greece", "spanish": "spain", "turkish": "turkey", "thai": "thailand",
            "filipino": "philippines", "norwegian": "norway", "swedish": "sweden",
            "danish": "denmark", "finnish": "finland", "polish": "poland", "irish": "ireland",
            "scottish": "scotland", "welsh": "wales", "arab": "arabic", "arabs": "arabic",
            "hillary": "clinton",
            "england": "uk", "holland": "netherlands", "bombay": "mumbai",
            "bengaluru": "bangalore", "madras": "chennai", "calcutta": "kolkata",
            "gurugram": "gurgaon", "kyiv": "kiev", "czech": "czechia", "golang": "go",
            "nodejs": "node", "js": "javascript", "american": "usa", "americans": "usa",
            "british": "uk", "english": "english"}
# Entities whose addition on one side narrows the question (a place, a language).
_PLACE_LIKE = frozenset(_ALIASES.get(w, w) for w in _GAZETTEER_WORDS) | (
    frozenset(_GAZETTEER_PHRASES.values()) - {"cplusplus", "csharp", "fsharp", "dotnet"})
_GAZETTEER_ALL = _GAZETTEER_WORDS | _GAZETTEER_NAMES


# --------------------------------------------------------------------------- normalisation

_QUOTES = str.maketrans({"’": "'", "‘": "'", "`": "'", "“": '"', "”": '"', "–": "-", "—": "-"})
_CONTRACTIONS = (
    (re.compile(r"\bwon't\b", re.I), "will not"), (re.compile(r"\bcan't\b", re.I), "can not"),
    (re.compile(r"\bcannot\b", re.I), "can not"), (re.compile(r"\bshan't\b", re.I), "shall not"),
    (re.compile(r"\bain't\b", re.I), "is not"), (re.compile(r"n't\b", re.I), " not"),
    (re.compile(r"'re\b", re.I), " are"), (re.compile(r"'ll\b", re.I), " will"),
    (re.compile(r"'ve\b", re.I), " have"), (re.compile(r"(?<=[a-z])'m\b", re.I), " am"),
    (re.compile(r"(?<=[a-z])'d\b", re.I), " would"),
    (re.compile(r"\b(it|that|what|who|where|how|there|here|he|she|when|why|which)'s\b", re.I), r"\1 is"),
    (re.compile(r"\blet's\b", re.I), "let us"),
    (re.compile(r"(?<=\w)'s\b"), ""), (re.compile(r"(?<=s)'(?=\s|$)"), ""),
)
# Phrases that contain a cue word without its meaning.
_NEUTRALISE = (
    (re.compile(r"\bnot only\b", re.I), "also"), (re.compile(r"\bno matter\b", re.I), "whatever"),
    (re.compile(r"\b(why|if|and|or)?,? ?(or|and|if) (why|if) not\b", re.I), ""),
    (re.compile(r"\bif not,? why\b", re.I), ""), (re.compile(r"\byes ?(/|or) ?no\b", re.I), ""),
    (re.compile(r"\b(whether|if) or not\b", re.I), r"\1"), (re.compile(r"\bor not\b", re.I), ""),
    (re.compile(r"\bno one\b", re.I), "noone"), (re.compile(r"\bno-one\b", re.I), "noone"),
    (re.compile(r"\b(log|sign|turn)[ -](in|on|out|off)\b", re.I), r"\1\2"),
    (re.compile(r"\bturnin\b", re.I), "turn in"),
    (re.compile(r"\bpros and cons\b", re.I), "proscons"),
    (re.compile(r"\badvantages and disadvantages\b", re.I), "proscons"),
    (re.compile(r"\bdisadvantages and advantages\b", re.I), "proscons"),
    (re.compile(r"\bcons and pros\b", re.I), "proscons"),
    (re.compile(r"\bthe first time\b", re.I), "firsttime"),
    (re.compile(r"\bat least\b", re.I), "atleast"), (re.compile(r"\bat most\b", re.I), "atmost"),
    (re.compile(r"\bmore or less\b", re.I), "roughly"),
    (re.compile(r"\bsooner or later\b", re.I), "eventually"),
    (re.compile(r"\bright now\b", re.I), "now"),
    (re.compile(r"\b(in|during|through) the fall\b", re.I), r"\1 autumn"),  # the season, not "the fall of Rome"
    (re.compile(r"\b(this|last|next) fall\b", re.I), r"\1 autumn"),
    (re.compile(r"\bfull[ -]time\b", re.I), "fulltime"), (re.compile(r"\bpart[ -]time\b", re.I), "parttime"),
    (re.compile(r"\bday[ -]to[ -]day\b", re.I), "daily"), (re.compile(r"\bstep[ -]by[ -]step\b", re.I), "stepwise"),
    (re.compile(r"\bone[ -](of|another|day|way)\b", re.I), r"\1"),
    (re.compile(r"\b(the )?(same|different) (as|from)\b", re.I), r"\2 \3"),
)

_TOKEN = re.compile(
    r"[#$€£¥₹]?\d[\d,]*(?:\.\d+)?(?:[:/\-.]\d+)*(?:%|[a-zA-Z]+(?:-?\d+)*)?"  # numbers, dates, 10k, 7pm
    r"|[A-Za-z]+(?:[&+\-][A-Za-z0-9]+)*(?:\d+[A-Za-z0-9]*)?(?:[-]\d+)?[+#]*"  # words, A320, COVID-19, C++
    r"|[$€£¥₹%]"
)
_SENTENCE_BREAK = re.compile(r"[.?!:;\n\"(]")
_HAS_DIGIT = re.compile(r"\d")
_NUMERIC = re.compile(r"^[#$€£¥₹]?(\d[\d,]*(?:\.\d+)?)(%|[a-zA-Z]+)?$")
_DATE_NUMERIC = re.compile(r"^(\d{1,4})[/\-.](\d{1,2})(?:[/\-.](\d{1,4}))?$")
_TIME = re.compile(r"^(\d{1,2})(?::(\d{2}))?(am|pm|a\.m|p\.m)?$", re.I)
_ORDINAL_SUFFIX = frozenset("st nd rd th".split())


def _clean_number(raw: str) -> float | None:
    raw = raw.replace(",", "")
    try:
        return float(raw)
    except ValueError:
        return None


def _num_key(value: float) -> str:
    if value == int(value):
        return str(int(value))
    return f"{value:.6g}"


def _inflect(word: str) -> set[str]:
    """A word and its likely inflections (over-generation is harmless here)."""
    forms = {word, word + "s", word + "es", word + "ed", word + "d", word + "ing"}
    if word.endswith("e"):
        forms |= {word[:-1] + "ing", word[:-1] + "ed"}
    if word.endswith("y") and len(word) > 3:
        forms |= {word[:-1] + "ies", word[:-1] + "ied"}
    if len(word) >= 3 and word[-1] not in "aeiouwxy" and word[-2] in "aeiou" and word[-3] not in "aeiou":
        forms |= {word + word[-1] + "ed", word + word[-1] + "ing"}
    return forms


def _lexicon(pairs: tuple[tuple[str, str], ...]) -> dict[str, list[tuple[int, int]]]:
    table: dict[str, list[tuple[int, int]]] = {}
    for gid, (left, right) in enumerate(pairs):
        for pole, words in ((0, left), (1, right)):
            for w in words.split():
                for form in _inflect(w):
                    table.setdefault(form, []).append((gid, pole))
    return table


_POLARITY = _lexicon(_POLARITY_PAIRS)
# Irregular forms the generator misses.
for _w, _g in (("lost", "lose"), ("sold", "sell"), ("bought", "buy"), ("began", "begin"),
               ("begun", "begin"), ("won", "win"), ("grew", "grow"), ("rose", "rise"),
               ("risen", "rise"), ("fell", "fall"), ("shut", "close"), ("sent", "send"),
               ("lent", "lend"), ("withdrew", "withdraw"), ("withdrawn", "withdraw"),
               ("hated", "hate"), ("left", "leave")):
    _POLARITY[_w] = _POLARITY.get(_g, [])
_COMPARATIVE = _lexicon(_COMPARATIVE_PAIRS)


def _degree_forms() -> dict[str, tuple[str, int]]:
    table: dict[str, tuple[str, int]] = {}
    for base in _GRADABLE:
        stem = base
        if base.endswith("y"):
            stem = base[:-1] + "i"
        elif base.endswith("e"):
            stem = base[:-1]
        elif len(base) >= 3 and base[-1] not in "aeiouwxy" and base[-2] in "aeiou" and base[-3] not in "aeiou":
            stem = base + base[-1]
        table.setdefault(base, (base, 0))
        if len(base) <= 7 and base not in {"expensive", "popular", "important", "difficult",
                                           "powerful", "efficient", "effective", "reliable",
                                           "secure", "profitable", "beautiful", "dangerous",
                                           "interesting", "useful", "common"}:
            table.setdefault(stem + "er", (base, 1))
            table.setdefault(stem + "est", (base, 2))
    return table


_DEGREE = _degree_forms()


# --------------------------------------------------------------------------- features

@dataclass(frozen=True, slots=True)
class _Features:
    words: frozenset[str]            # lower-cased tokens after normalisation
    negated: bool
    polarity: frozenset[tuple[int, int]]
    atoms: dict                      # key -> kind ("number", "date", "identifier")
    weak_atoms: frozenset[str]
    quantities: frozenset[tuple[str, str]]  # (value key, unit) where a unit was written
    entities: frozenset[str]
    word_seq: tuple[str, ...]
    quantifiers: frozenset[str]
    only: bool
    comparative: frozenset[tuple[int, int]]
    degrees: dict                    # base -> set of degrees
    direction: tuple[tuple[str, str], ...]


def _trigger(pattern: re.Pattern[str]) -> str:
    """The first literal word a pattern needs: a cheap `in` test before running it."""
    words = re.findall(r"[a-z]{2,}", re.sub(r"\([^)]*\)", " ", pattern.pattern.replace("\\b", " ")))
    return words[0] if words else ""


_NEUTRALISE_GUARDED = tuple((p, r, _trigger(p)) for p, r in _NEUTRALISE)


def _normalise(text: str) -> str:
    text = text.translate(_QUOTES)
    if "'" in text or "cannot" in text.lower():
        for pattern, repl in _CONTRACTIONS:
            text = pattern.sub(repl, text)
    low = text.lower()
    for pattern, repl, trigger in _NEUTRALISE_GUARDED:
        if trigger in low:
            text = pattern.sub(repl, text)
    return text


def _is_title_case(tokens: list[str]) -> bool:
    alpha = [t for t in tokens[1:] if t[:1].isalpha()]
    if len(alpha) < 4:
        return False
    caps = sum(1 for t in alpha if t[0].isupper())
    return caps / len(alpha) > 0.5


def _is_shouting(tokens: list[str]) -> bool:
    alpha = [t for t in tokens if t.isalpha() and len(t) > 1]
    if len(alpha) < 3:
        return False
    return sum(1 for t in alpha if t.isupper()) / len(alpha) > 0.5


@lru_cache(maxsize=8192)
def _features(text: str) -> _Features:
    norm = _normalise(text)
    spans = [(m.group(0), m.start()) for m in _TOKEN.finditer(norm)]
    raw = [t for t, _ in spans]
    lower = [t.lower() for t in raw]
    title_case = _is_title_case(raw)
    shouting = _is_shouting(raw)

    negated = any(t in _NEGATION for t in lower)

    polarity: set[tuple[int, int]] = set()
    comparative: set[tuple[int, int]] = set()
    for t in lower:
        polarity.update(_POLARITY.get(t, ()))
        comparative.update(_COMPARATIVE.get(t, ()))
    # degree of gradable adjectives: 0 base, 1/2 comparative/superlative, -1/-2 "less"/"least"
    degrees: dict[str, set[int]] = {}
    for i, t in enumerate(lower):
        hit = _DEGREE.get(t)
        if not hit:
            continue
        base, degree = hit
        before = lower[i - 1] if i else ""
        if before in ("more", "most", "less", "least"):
            degree = {"more": 1, "most": 2, "less": -1, "least": -2}[before]
        elif degree == 2 and i + 1 < len(lower) and lower[i + 1] in ("way", "ways", "method", "methods"):
            continue  # "the fastest way to X" asks how to X fast: a manner, not a ranking
        degrees.setdefault(base, set()).add(degree)

    # numbers, dates, identifiers
    atoms: dict[str, str] = {}
    weak: set[str] = set()
    quantities: set[tuple[str, str]] = set()
    i = 0
    n = len(raw)
    while i < n:
        tok, low = raw[i], lower[i]
        prev = lower[i - 1] if i else ""
        nxt = lower[i + 1] if i + 1 < n else ""
        if low in _WEAK_ONE or (low in ("a", "an", "per") and (nxt in _UNITS or nxt in _PERIODS)):
            weak.add("1")
            i += 1
            continue
        if low in _NUMBER_WORDS or low in _ORDINAL_WORDS or low in _DECADE_WORDS:
            value = float(_NUMBER_WORDS.get(low, _ORDINAL_WORDS.get(low, _DECADE_WORDS.get(low, 0))))
            j = i + 1
            while j < n and (lower[j] in _NUMBER_WORDS or lower[j] in _MULTIPLIERS or lower[j] == "and"):
                w = lower[j]
                if w in _MULTIPLIERS and w not in ("k", "m", "b", "mn", "bn"):
                    value *= _MULTIPLIERS[w]
                elif w in _NUMBER_WORDS:
                    value += _NUMBER_WORDS[w]
                elif w == "and" and not (j + 1 < n and lower[j + 1] in _NUMBER_WORDS):
                    break
                j += 1
            if low == "second" and (nxt in ("hand", "opinion") or prev in ("a", "per")):
                i = j
                continue
            if low == "couple" and nxt != "of":
                i = j
                continue
            key = _num_key(value)
            atoms.setdefault(key, "number")
            unit = _UNITS.get(lower[j]) if j < n else None
            if unit:
                quantities.add((key, unit))
            i = j
            continue
        if low in ("hundred", "thousand", "million", "billion") and prev not in ("a", "one"):
            i += 1
            continue
        if low in ("hundred", "thousand", "million", "billion"):
            key = _num_key(_MULTIPLIERS[low])
            atoms.setdefault(key, "number")
            i += 1
            continue
        if tok[:1] in "#$€£¥₹" or tok[:1].isdigit():
            kind, keys, unit = _classify_numeric(tok, prev, nxt, lower[i + 2] if i + 2 < n else "")
            if kind == "number" and nxt in _MULTIPLIERS and nxt not in ("k", "m", "b") and keys:
                keys = [_num_key(float(keys[0]) * _MULTIPLIERS[nxt])]
                i += 1
                nxt = lower[i + 1] if i + 1 < n else ""
            if unit is None and kind == "number":
                unit = _UNITS.get(nxt) or (_UNITS.get(prev) if prev in ("$", "€", "£", "₹", "rs", "usd", "eur", "gbp", "inr", "aed") else None)
            for key in keys:
                atoms[key] = kind
                if unit and kind == "number":
                    quantities.add((key, unit))
            i += 1
            continue
        if _HAS_DIGIT.search(tok):
            key = re.sub(r"[^a-z0-9]", "", low)
            atoms[key] = "identifier"
            i += 1
            continue
        # months, weekdays, relative days, next/last week
        if low in _MONTHS:
            ambiguous = low in _AMBIGUOUS_MONTHS
            capital_mid = tok[0].isupper() and i > 0 and not title_case and not shouting
            near_number = prev[:1].isdigit() or nxt[:1].isdigit() or nxt in _ORDINAL_WORDS
            if not ambiguous or near_number or (capital_mid and low not in ("may",)):
                atoms["month:" + _MONTHS[low]] = "date"
            i += 1
            continue
        if low in _WEEKDAYS:
            if low not in _AMBIGUOUS_WEEKDAYS or tok[0].isupper():
                atoms["dow:" + _WEEKDAYS[low]] = "date"
            i += 1
            continue
        if low in _RELATIVE_DAYS:
            atoms["rel:" + _RELATIVE_DAYS[low]] = "date"
            i += 1
            continue
        if low in _PERIOD_MODIFIERS and nxt in _PERIODS:
            atoms[f"rel:{_PERIOD_MODIFIERS[low]}-{nxt}"] = "date"
            i += 2
            continue
        i += 1

    for value in _roman_numerals(text):  # World War II, Henry VIII: numbers too
        atoms.setdefault(_num_key(float(value)), "number")
    # named entities
    entities: set[str] = set()
    for size in (2, 3, 4):
        for k in range(len(lower) - size + 1):
            canon = _GAZETTEER_PHRASES.get(" ".join(lower[k:k + size]))
            if canon:
                entities.add(canon)
    if "." in norm or "+" in norm or "#" in norm:
        low_norm = norm.lower()
        for phrase, canon in _PUNCTUATED_PHRASES.items():
            if phrase in low_norm:
                entities.add(canon)
    prev_end = 0
    for idx, (tok, start) in enumerate(spans):
        gap, prev_end = norm[prev_end:start], start + len(tok)
        low = lower[idx]
        if not tok[:1].isalpha() or low in _MONTHS or low in _WEEKDAYS or low in _RELATIVE_DAYS:
            continue
        if low in _GAZETTEER_ALL:
            if low == "us" and tok != "US":
                continue
            entities.add(_ALIASES.get(low, low))
            continue
        if tok == "US":
            entities.add("usa")
            continue
        if low in _NOT_NAMES or low in _NEGATION or low in _UNITS:
            continue
        sentence_start = idx == 0 or bool(_SENTENCE_BREAK.search(gap))
        acronym = len(tok) >= 2 and tok.isupper() and tok.isalpha()
        if acronym and not shouting:
            entities.add(_ALIASES.get(low, low))
        elif tok[0].isupper() and not sentence_start and not title_case and not shouting:
            entities.add(_ALIASES.get(low, low))
        elif any(c.isupper() for c in tok[1:]) and not tok.isupper() and not shouting:
            entities.add(low)  # camel case: iPhone, YouTube, PayPal

    quantifiers = {_QUANTIFIER_CLASSES[t] for t in lower if t in _QUANTIFIER_CLASSES}
    only = any(t in _ONLY for t in lower)

    direction: list[tuple[str, str]] = []
    for idx, t in enumerate(lower):
        if t in _DIRECTION_CUES:
            j = idx + 1
            while j < n and lower[j] in _DETERMINERS:
                j += 1
            if j < n and lower[j] not in _STOP and lower[j][:1].isalnum() and (
                    j + 1 == n or lower[j + 1] not in ("or", "and")):  # "better to rent or buy": no direction
                direction.append((t, lower[j]))

    words = set(lower)
    words |= {w[:-1] for w in lower if w.endswith("s") and len(w) > 3}
    return _Features(
        words=frozenset(words), negated=negated, polarity=frozenset(polarity),
        atoms=atoms, weak_atoms=frozenset(weak), quantities=frozenset(quantities),
        entities=frozenset(entities),
        word_seq=tuple(w for w in lower if w[:1].isalnum()),
        quantifiers=frozenset(quantifiers), only=only, comparative=frozenset(comparative),
        degrees={k: frozenset(v) for k, v in degrees.items()},
        direction=tuple(direction),
    )


def _classify_numeric(tok: str, prev: str, nxt: str, nxt2: str) -> tuple[str, list[str], str | None]:
    """(kind, canonical keys, unit or None) for a token that starts with a digit or symbol."""
    unit: str | None = None
    body = tok
    if body[:1] in "$€£¥₹":
        unit = _UNITS[body[0]]
        body = body[1:]
    elif body[:1] == "#":
        digits = re.sub(r"[^a-z0-9]", "", body[1:].lower())
        return "identifier", [digits], None
    low = body.lower()
    m = _DATE_NUMERIC.match(low)
    if m and (m.group(3) or "/" in low) and ":" not in low:
        parts = [p for p in m.groups() if p]
        return "date", ["date:" + "-".join(str(int(p)) for p in parts)], None
    t = _TIME.match(low)
    if t and (t.group(2) or t.group(3)):
        hour = int(t.group(1)) % 12 + (12 if (t.group(3) or "").startswith("p") else 0)
        if not t.group(3) and not t.group(2):
            return "number", [t.group(1)], None
        return "date", [f"time:{hour}:{t.group(2) or '00'}"], None
    m = _NUMERIC.match(body)
    if not m:
        digits = re.sub(r"[^a-z0-9]", "", low)
        return "identifier", [digits], None
    value = _clean_number(m.group(1))
    suffix = (m.group(2) or "").lower()
    if value is None:
        return "identifier", [re.sub(r"[^a-z0-9]", "", low)], None
    if suffix == "%":
        return "number", [_num_key(value)], "pct"
    if suffix in _ORDINAL_SUFFIX:
        return "number", [_num_key(value)], None
    if suffix in ("k", "m", "mn", "b", "bn", "lakh", "lakhs", "crore", "crores") and unit is not None:
        return "number", [_num_key(value * _MULTIPLIERS[suffix])], unit
    if suffix == "k":
        return "number", [_num_key(value * 1000)], unit
    if suffix in ("am", "pm"):
        hour = int(value) % 12 + (12 if suffix == "pm" else 0)
        return "date", [f"time:{hour}:00"], None
    if suffix == "s" and 1000 <= value <= 2100:
        return "date", [f"decade:{int(value)}"], None
    if suffix == "s":
        return "number", [_num_key(value)], None
    if suffix:
        if suffix in _UNITS:
            return "number", [_num_key(value)], _UNITS[suffix]
        return "identifier", [re.sub(r"[^a-z0-9]", "", low)], None
    digits_only = re.sub(r"[^0-9]", "", m.group(1))
    if prev in _ID_CUES or prev == "#":
        return "identifier", [digits_only if "." not in m.group(1) else _num_key(value)], None
    if "," not in m.group(1) and "." not in m.group(1):
        if len(digits_only) == 4 and 1800 <= value <= 2100 and unit is None:
            return "date", [digits_only], None
        if len(digits_only) >= 6 and unit is None:
            return "identifier", [digits_only], None
    return "number", [_num_key(value)], unit


# --------------------------------------------------------------------------- comparison

def _entity_matched(entity: str, other: _Features) -> bool:
    if entity in other.entities or entity in other.words:
        return True
    if "_" in entity and all(part in other.words for part in entity.split("_")):
        return True
    for candidate in other.entities:
        shorter, longer = sorted((entity, candidate), key=len)
        k = 0
        while k < len(shorter) and shorter[k] == longer[k]:
            k += 1
        if k >= 4 and k >= 0.75 * len(shorter):  # india/indian, japan/japanese, not austria/australia
            return True
    for candidate in other.words:
        if len(candidate) >= 4 and len(entity) >= 4:
            shorter, longer = sorted((entity, candidate), key=len)
            if longer.startswith(shorter) and len(longer) - len(shorter) <= 3 and len(shorter) >= 0.75 * len(longer):
                return True
    if len(entity) >= 2 and entity.isalpha() and _spelled_by_initials(entity, other.word_seq):
        return True
    return False


def _spelled_by_initials(acronym: str, seq: tuple[str, ...]) -> bool:
    m = len(acronym)
    if m < 2 or m > 6:
        return False
    content = [w for w in seq if w not in ("of", "and", "the", "for", "&")]
    for start in range(len(content) - m + 1):
        if all(content[start + k][0] == acronym[k] for k in range(m)):
            return True
    return False


def _covered_by_acronym(entity: str, fa: _Features, fb: _Features) -> bool:
    """An entity word of A is matched when B has an acronym that spells a run of A's words containing it."""
    for acronym in fb.entities:
        m = len(acronym)
        if m < 2 or m > 6 or not acronym.isalpha():
            continue
        content = [w for w in fa.word_seq if w not in ("of", "and", "the", "for", "&")]
        for start in range(len(content) - m + 1):
            run = content[start:start + m]
            if all(run[k][0] == acronym[k] for k in range(m)) and entity in run:
                return True
    return False


def _unmatched_entities(fa: _Features, fb: _Features) -> set[str]:
    return {e for e in fa.entities
            if not _entity_matched(e, fb) and not _covered_by_acronym(e, fa, fb)}


def _poles(polarity: frozenset[tuple[int, int]]) -> dict[int, int]:
    """group -> pole, for groups the text takes exactly one side of."""
    seen: dict[int, set[int]] = {}
    for gid, pole in polarity:
        seen.setdefault(gid, set()).add(pole)
    return {gid: next(iter(p)) for gid, p in seen.items() if len(p) == 1}


def _opposite(a: frozenset[tuple[int, int]], b: frozenset[tuple[int, int]]) -> bool:
    pa, pb = _poles(a), _poles(b)
    return any(gid in pb and pb[gid] != pole for gid, pole in pa.items())


def _prefix_polarity(fa: _Features, fb: _Features) -> bool:
    """"legal" against "illegal", "likely" against "unlikely", "able" against "unable"."""
    for w in fa.words:
        for prefix in ("un", "in", "im", "il", "ir", "dis", "non", "anti"):
            if w.startswith(prefix):
                base = w[len(prefix):].lstrip("-")
                if len(base) >= 4 and base in fb.words and w not in fb.words and base not in fa.words:
                    return True
    return False


def _atom_difference(fa: _Features, fb: _Features) -> str | None:
    def unmatched(x: _Features, y: _Features) -> list[str]:
        out = []
        for key, kind in x.atoms.items():
            if key in y.atoms or key in y.weak_atoms:
                continue
            out.append(kind)
        return out

    kinds = unmatched(fa, fb) + unmatched(fb, fa)
    for kind in ("identifier", "date", "number"):
        if kind in kinds:
            return kind
    return None


def _unit_difference(fa: _Features, fb: _Features) -> bool:
    units_a = {}
    for key, unit in fa.quantities:
        units_a.setdefault(key, set()).add(unit)
    for key, unit in fb.quantities:
        if key in units_a and unit not in units_a[key]:
            return True
    return False


_STRONG_QUANTIFIERS = frozenset({"all", "none", "both", "either", "most", "few"})


def _quantifier_difference(fa: _Features, fb: _Features) -> bool:
    """"only" on one side; or each side has a quantifier class the other lacks ("all" vs
    "any"). A quantifier on one side only ("some good books" vs "good books") is not a veto."""
    if fa.only != fb.only:
        return True
    only_a, only_b = fa.quantifiers - fb.quantifiers, fb.quantifiers - fa.quantifiers
    return bool(only_a and only_b and ((only_a | only_b) & _STRONG_QUANTIFIERS))


def _comparative_difference(fa: _Features, fb: _Features) -> bool:
    if _opposite(fa.comparative, fb.comparative):
        return True
    for base, da in fa.degrees.items():
        db = fb.degrees.get(base)
        if not db:
            continue
        if da & db:
            continue
        if (0 in da) != (0 in db):
            return True  # "cheapest" against "cheap"
        if any(x * y < 0 for x in da for y in db):
            return True  # "healthier" against "less healthy"
    return False


def _direction_swapped(fa: _Features, fb: _Features) -> bool:
    da, db = set(fa.direction), set(fb.direction)
    if da == db or (fa.words | fb.words) & _SYMMETRIC_CUES:  # "similar to", "compared to": either way round
        return False
    for cue, arg in da - db:
        for cue_b, arg_b in db - da:
            if cue_b == cue and arg_b != arg and arg_b in fa.words and arg in fb.words:
                return True
    return False


# A text asking about a symmetric relation: its two sides can be swapped freely.
_SYMMETRIC_CUES = frozenset("""
difference differences differ differs between compare compared comparing comparison versus vs similar
similarity similarities same alike equal equivalent
""".split())
_ORDER_SKIP = _STOP | _SYMMETRIC_CUES


# Words that make "x LINK y" one-way when x and y trade places ("ounces in a pound").
_ONE_WAY_LINKS = frozenset("in of for on at by to from into onto per over under inside within than against".split())
_TWO_WAY_LINKS = frozenset("and or nor vs versus".split())


def _content_words(f: _Features) -> list[tuple[int, str]]:
    """(position in word_seq, word) of the words that carry content, plurals folded."""
    return [(i, w[:-1] if w.endswith("s") and len(w) > 3 and not w.endswith("ss") else w)
            for i, w in enumerate(f.word_seq) if w not in _ORDER_SKIP]


def _roles_swapped(fa: _Features, fb: _Features) -> bool:
    """The same content words, where the only difference is two single words exchanged:
    A x M y B against A y M x B.

    With one to three content words between them ("dog chases cat" against "cat chases
    dog") that is a swap. Side by side, it is one only when the same one-way link joins
    them in both texts ("ounces in a pound" against "pounds in an ounce"); "rent or buy"
    and "Tokyo's population" against "population of Tokyo" are not. A phrase moved to the
    front or the back ("In Python, how do I ...?" against "How do I ... in Python?") is
    not one word exchanged for another, nor are longer parts ("water's boiling point"
    against "boiling point of water"), so neither counts."""
    if (fa.words | fb.words) & _SYMMETRIC_CUES:
        return False
    pa, pb = _content_words(fa), _content_words(fb)
    ca, cb = [w for _, w in pa], [w for _, w in pb]
    if ca == cb or len(ca) != len(cb) or sorted(ca) != sorted(cb):
        return False
    diff = [i for i in range(len(ca)) if ca[i] != cb[i]]
    first, last = diff[0], diff[-1]
    x, y = ca[first], ca[last]
    if not (last - first <= 4 and cb[first] == y and cb[last] == x and ca[first + 1:last] == cb[first + 1:last]
            and x not in _DEGREE and y not in _DEGREE):
        return False
    if last - first >= 2:
        return True

    def link(seq: tuple[str, ...], i: int, j: int) -> list[str]:
        return [w for w in seq[i + 1:j] if w not in _DETERMINERS]

    la, lb = link(fa.word_seq, pa[first][0], pa[last][0]), link(fb.word_seq, pb[first][0], pb[last][0])
    return la == lb and bool(_ONE_WAY_LINKS.intersection(la)) and not _TWO_WAY_LINKS.intersection(la)


_ROMAN = re.compile(r"^(?=[IVX]{2,}$)X{0,3}(IX|IV|V?I{0,3})$")
_ROMAN_VALUE = {"I": 1, "V": 5, "X": 10}
_WORD = re.compile(r"[A-Za-z]+|[?!.,;:]")


def _roman_value(tok: str) -> int:
    total, prev = 0, 0
    for ch in reversed(tok):
        v = _ROMAN_VALUE[ch]
        total += -v if v < prev else v
        prev = max(prev, v)
    return total


@lru_cache(maxsize=8192)
def _roman_numerals(text: str) -> frozenset[int]:
    """Upper-case roman numerals in I/V/X (World War II, Henry VIII, Part IV); a lone "I"
    counts only after a capitalised word at the end of a phrase ("World War I?"), where it
    cannot be the pronoun."""
    toks = _WORD.findall(text)
    out = set()
    for i, t in enumerate(toks):
        if _ROMAN.match(t):
            out.add(_roman_value(t))
        elif (t == "I" and i >= 2 and toks[i - 1][:1].isupper() and toks[i - 1].isalpha()
              and toks[i - 2].isalpha() and (i + 1 == len(toks) or not toks[i + 1].isalpha())):
            out.add(1)
    return frozenset(out)


_WH = re.compile(r"\b(where|when|who|whom|whose|why|how (?:many|much|long|old|far|often))\b")


@lru_cache(maxsize=8192)
def _question_words(text: str) -> frozenset[str]:
    """The interrogatives that fix what kind of answer is wanted (a place, a time, a person,
    a reason, an amount). "What", "which" and a bare "how" are left out: they paraphrase
    each other and these freely."""
    found = set(_WH.findall(text.lower().replace("who's", "who is")))
    return frozenset("who" if w in ("whom",) else w for w in found)


@lru_cache(maxsize=8192)  # a paraphrase asked again meets the same candidate: pure, so judged once
def verify(query: str, cached: str) -> Verdict:
    """Compare a query with a cached entry's text; veto when a meaning-bearing feature differs.

    Pure and deterministic; symmetric in its arguments. Identical texts (after
    whitespace and case folding) are always `ok`.
    """
    if query == cached or query.strip().lower() == cached.strip().lower():
        return OK
    fa, fb = _features(query), _features(cached)
    if fa.negated != fb.negated:
        return Verdict(False, "negation")
    if _opposite(fa.polarity, fb.polarity) or _prefix_polarity(fa, fb) or _prefix_polarity(fb, fa):
        return Verdict(False, "polarity")
    kind = _atom_difference(fa, fb)
    if kind:
        return Verdict(False, kind)
    if _unit_difference(fa, fb):
        return Verdict(False, "unit")
    missing_a, missing_b = _unmatched_entities(fa, fb), _unmatched_entities(fb, fa)
    if missing_a and missing_b:
        return Verdict(False, "entity")
    if (missing_a | missing_b) & _PLACE_LIKE:
        return Verdict(False, "entity")
    if _quantifier_difference(fa, fb):
        return Verdict(False, "quantifier")
    if _comparative_difference(fa, fb):
        return Verdict(False, "comparative")
    if _direction_swapped(fa, fb):
        return Verdict(False, "direction")
    if _roles_swapped(fa, fb):
        return Verdict(False, "order")
    qa, qb = _question_words(query), _question_words(cached)
    if qa and qb and not qa & qb:
        return Verdict(False, "question")
    return OK
