#!/usr/bin/env python3
"""Seeded generator of short children's stories and story instructions (the demo model's corpus).

Everything here is our own code and word lists; the text it writes is generated, not copied
from anywhere. The output is deterministic in --seed (Python's `random.Random`, no hashing of
strings), so the same command writes the same bytes on any machine.

A story has a hero (a named animal with consistent pronouns), a place, an object, a helper
(another named animal) and one of a small set of plot shapes: want -> problem -> help ->
ending. Every beat has several sentence forms. Documents are JSON lines:

    {"kind": "chat", "user": "Tell me a story about a dog named Max who lost his ball.",
     "assistant": "Once upon a time, ..."}
    {"kind": "story", "text": "Once upon a time, ..."}
    {"kind": "chat", "user": "What does a cow say?", "assistant": "A cow says moo."}

Held-out pairs: some (animal, object) pairs and some (name, place) pairs never occur together
in any training document (hero or helper). `--heldout` writes prompts that use exactly those
pairs, with the words an answer should mention, for the "it speaks" check.

Usage:
    python tools/demo_model/story_corpus.py --seed 1 --docs 1000 --out corpus.jsonl
    python tools/demo_model/story_corpus.py --heldout tests/data/demo_model/heldout_prompts.json
    python tools/demo_model/story_corpus.py --vocab   # print the word list, one a line
"""

import argparse
import json
import random
import re
import sys

# ---------------------------------------------------------------------------------------------
# Word lists
# ---------------------------------------------------------------------------------------------

BOY_NAMES = [
    "Max", "Tom", "Sam", "Ben", "Leo", "Jack", "Finn", "Oscar", "Toby", "Jake", "Alex", "Noah",
    "Luke", "Owen", "Theo", "Milo", "Eli", "Hugo", "Oliver", "Charlie", "Henry", "Lucas", "Ryan",
    "Adam", "Peter", "Danny", "Billy", "Timmy", "Jim", "Bob", "Fred", "Harry", "Joe", "Mark",
    "Paul", "Simon", "Sid", "Ted", "Gus", "Rex", "Zack", "Kevin", "Louis", "Arthur", "George",
    "Frank", "Walter", "Victor", "Dylan", "Jasper", "Rupert", "Felix",
]
GIRL_NAMES = [
    "Lily", "Mia", "Lucy", "Emma", "Anna", "Ella", "Rose", "Zoe", "Ruby", "Sara", "Amy", "Grace",
    "Daisy", "Molly", "Chloe", "Sophie", "Ivy", "Nora", "Kate", "Maya", "Hannah", "Alice", "Clara",
    "Bella", "Poppy", "Susie", "Jenny", "Wendy", "Lisa", "Jane", "Sally", "Polly", "Holly", "Amber",
    "Katie", "Julia", "Laura", "Olivia", "Betty", "Tina", "Nina", "Penny", "Rita", "Greta", "Hazel",
    "Violet", "Fiona", "Flora", "Stella", "Luna", "Iris", "Willow",
]
NAMES = BOY_NAMES + GIRL_NAMES

ANIMALS = [
    "dog", "cat", "bird", "rabbit", "fox", "bear", "duck", "frog", "mouse", "horse", "pig", "owl",
    "turtle", "lion", "monkey", "squirrel", "puppy", "kitten", "goat", "sheep", "cow", "deer",
    "hen", "elephant", "goose", "tiger", "zebra", "giraffe", "panda", "penguin", "hippo",
    "kangaroo", "hedgehog", "raccoon", "beaver", "badger", "camel", "donkey", "seal", "wolf",
]
ANIMAL_SOUNDS = {
    "dog": "woof", "cat": "meow", "bird": "tweet", "rabbit": "squeak", "fox": "yip",
    "bear": "growl", "duck": "quack", "frog": "ribbit", "mouse": "squeak", "horse": "neigh",
    "pig": "oink", "owl": "hoot", "turtle": "hiss", "lion": "roar", "monkey": "ooh",
    "squirrel": "chatter", "puppy": "woof", "kitten": "mew", "goat": "baa", "sheep": "baa",
    "cow": "moo", "deer": "bleat", "hen": "cluck", "elephant": "toot", "goose": "honk",
    "tiger": "roar", "zebra": "bark", "giraffe": "hum", "panda": "bleat", "penguin": "squawk",
    "hippo": "grunt", "kangaroo": "chortle", "hedgehog": "snuffle", "raccoon": "chitter",
    "beaver": "whistle", "badger": "growl", "camel": "moan", "donkey": "hee haw", "seal": "bark",
    "wolf": "howl",
}
ANIMAL_FOODS = {
    "dog": "bones", "cat": "fish", "bird": "seeds", "rabbit": "carrots", "fox": "berries",
    "bear": "honey", "duck": "bread", "frog": "bugs", "mouse": "cheese", "horse": "apples",
    "pig": "corn", "owl": "bugs", "turtle": "leaves", "lion": "meat", "monkey": "bananas",
    "squirrel": "nuts", "puppy": "bones", "kitten": "milk", "goat": "grass", "sheep": "grass",
    "cow": "grass", "deer": "leaves", "hen": "seeds", "elephant": "peanuts", "goose": "grass",
    "tiger": "meat", "zebra": "grass", "giraffe": "leaves", "panda": "bamboo", "penguin": "fish",
    "hippo": "grass", "kangaroo": "grass", "hedgehog": "bugs", "raccoon": "berries",
    "beaver": "bark", "badger": "worms", "camel": "hay", "donkey": "hay", "seal": "fish",
    "wolf": "meat",
}
OBJECTS = [
    "ball", "kite", "hat", "book", "drum", "boat", "doll", "train", "bike", "cup", "shoe", "box",
    "key", "bell", "blanket", "sock", "scarf", "shell", "flower", "stick", "truck", "robot",
    "bucket", "map", "balloon", "crayon", "puzzle", "basket", "lamp", "whistle", "ribbon", "teddy",
    "wagon", "rocket", "guitar", "necklace", "marble", "pillow", "jacket", "helmet", "paintbrush",
    "ring", "glove", "sailboat", "yoyo",
]
# what each object is for ({x}: "it", "his kite" or "a kite"). Names, animals and places each
# decide later words (pronouns; sounds and foods; sights and prepositions), which is what makes a
# small model carry their identity through a story and copy them from a prompt; without these the
# object decided nothing but itself, and the trained model never learned which one it was.
OBJECT_USES = {
    "ball": "bounce {x} high", "kite": "fly {x} in the wind", "hat": "wear {x} in the sun",
    "book": "read {x} before bed", "drum": "bang on {x} with two sticks",
    "boat": "float {x} on the water", "doll": "rock {x} to sleep",
    "train": "push {x} along the tracks", "bike": "ride {x} down the hill",
    "cup": "drink warm milk from {x}", "shoe": "wear {x} on long walks",
    "box": "keep treasures in {x}", "key": "open the old door with {x}", "bell": "ring {x} loudly",
    "blanket": "wrap up in {x} at night", "sock": "pull on {x} on cold days",
    "scarf": "keep warm with {x} on windy days", "shell": "listen to the sea in {x}",
    "flower": "smell {x} every morning", "stick": "draw lines in the sand with {x}",
    "truck": "fill {x} with little stones", "robot": "make {x} walk and beep",
    "bucket": "carry water in {x}", "map": "find new paths with {x}",
    "balloon": "hold {x} by its string", "crayon": "draw pictures with {x}",
    "puzzle": "put {x} together piece by piece", "basket": "carry apples in {x}",
    "lamp": "read by the light of {x}", "whistle": "blow {x} very loud", "ribbon": "tie {x} in a bow",
    "teddy": "hug {x} at bedtime", "wagon": "pull {x} around the yard",
    "rocket": "launch {x} into the sky", "guitar": "strum {x} and sing",
    "necklace": "wear {x} to parties", "marble": "roll {x} across the floor",
    "pillow": "rest on {x} after lunch", "jacket": "zip up {x} on chilly days",
    "helmet": "put on {x} before a ride", "paintbrush": "paint bright colors with {x}",
    "ring": "wear {x} on one finger", "glove": "catch balls with {x}",
    "sailboat": "sail {x} across the pond", "yoyo": "spin {x} up and down",
}
USE_LINES = [  # right after the object is introduced: which use follows depends on which object
    "{He} liked to {use_it}.", "Every day, {N} would {use_his}.", "{N} loved to {use_it}.",
    "{His} favorite game was to {use_his}.",
]
USE_ENDINGS = [
    "The next day, {N} went out to {use_his} again.", "After that, {N} liked to {use_his} with {H}.",
]
# where the object can get stuck, and what can fix it when it breaks
STUCK_SPOTS = ["high up in a tree", "on top of the roof", "deep in the mud", "under a big rock",
               "in a thick bush", "on a high shelf"]
FIXES = ["some glue", "a piece of tape", "a long string", "a needle and thread", "a small nail",
         "a bit of rope"]
# place -> the preposition for "being there"
PLACES = {
    "park": "in", "forest": "in", "garden": "in", "beach": "at", "farm": "on", "lake": "at",
    "river": "by", "hill": "on", "town": "in", "school": "at", "zoo": "at", "market": "at",
    "meadow": "in", "pond": "by", "field": "in", "village": "in", "yard": "in",
    "library": "at", "castle": "at", "mountain": "on", "jungle": "in", "island": "on",
    "desert": "in", "valley": "in", "harbor": "at", "bakery": "at", "playground": "at",
    "orchard": "in", "cave": "in", "swamp": "in", "city": "in", "station": "at",
}
PLACE_LIST = list(PLACES)
PLACE_SIGHTS = {
    "park": "swings and a slide", "forest": "tall trees and soft moss",
    "garden": "roses and tall sunflowers", "beach": "warm sand and big waves",
    "farm": "a red barn and green fields", "lake": "clear water and little boats",
    "river": "fast water and smooth stones", "hill": "green grass and a great view",
    "town": "busy streets and small shops", "school": "a big yard and many friends",
    "zoo": "many animals and a big gate", "market": "fruit stands and loud voices",
    "meadow": "wild flowers and buzzing bees", "pond": "lily pads and little fish",
    "field": "long grass and yellow flowers", "village": "small houses and an old well",
    "yard": "a green lawn and a wooden fence", "library": "tall shelves and quiet rooms",
    "castle": "high walls and a tall tower", "mountain": "big rocks and cold wind",
    "jungle": "thick vines and noisy parrots", "island": "palm trees and blue water",
    "desert": "hot sand and tall cactus plants", "valley": "a quiet stream and soft hills",
    "harbor": "big ships and flying seagulls", "bakery": "warm bread and sweet smells",
    "playground": "a sandbox and a seesaw", "orchard": "rows of apple trees and ripe fruit",
    "cave": "dark corners and dripping water", "swamp": "muddy water and croaking frogs",
    "city": "tall buildings and busy roads", "station": "long trains and loud whistles",
}
LANDMARKS = ["tree", "rock", "bush", "bench", "fence", "bridge", "log", "wall", "gate", "pile of leaves",
             "flower bed", "old cart", "little hill", "big box"]
COLORS = ["red", "blue", "green", "yellow", "pink", "purple", "orange", "brown", "white", "gold",
          "silver", "black", "gray", "striped", "spotted"]
HERO_ADJS = ["little", "small", "happy", "kind", "brave", "shy", "curious", "silly", "clever",
             "gentle", "friendly", "young", "tiny", "playful", "cheerful", "busy", "sleepy", "funny",
             "quiet", "bold", "smart", "polite", "lively", "sweet", "careful", "eager", "proud", "hungry"]
OBJ_ADJS = ["shiny", "soft", "old", "new", "favorite", "special", "bright", "little", "big", "fancy",
            "colorful", "pretty", "smooth", "heavy", "light", "lovely", "magic", "wonderful"]
FOODS = ["apple", "cake", "sandwich", "cookie", "carrot", "banana", "pie", "muffin", "pear",
         "plum", "peach", "orange", "pancake", "cupcake", "grape", "melon", "lemon", "biscuit",
         "strawberry", "cherry", "potato", "tomato", "pizza", "noodle"]
GAMES = ["played tag", "sang songs", "danced in the sun", "built a tall tower", "read a book",
         "jumped over puddles", "picked flowers", "ran in circles", "played hide and seek",
         "drew pictures in the sand", "rolled down the grass", "counted the clouds",
         "told funny jokes", "had a picnic", "played catch", "made a sand castle",
         "blew bubbles", "chased butterflies", "looked for shiny stones", "splashed in the water",
         "flew paper planes", "played a guessing game", "raced to the big tree", "made funny faces",
         "sang a silly song", "watched the birds", "built a fort with sticks", "drew with chalk"]
RELATIVES = ["mom", "dad", "grandma", "grandpa", "sister", "brother", "aunt", "uncle", "cousin", "teacher",
             "neighbor"]
SKILLS = {  # skill -> what it takes
    "swim": "kick your legs and move your arms", "climb": "hold on tight and go slow",
    "jump high": "bend your knees and push hard", "whistle": "make your lips round and blow",
    "skip": "hop on one foot and then the other", "dance": "listen to the music and move",
    "sing": "take a deep breath and start soft", "run fast": "lean forward and swing your arms",
    "ride a bike": "look ahead and keep pedaling", "read": "sound out each letter slowly",
    "count to ten": "use your fingers and go one by one", "tie a knot": "make a loop and pull it through",
    "catch a ball": "keep your eyes on the ball and open your hands",
    "paint": "dip the brush and make gentle strokes",
}
WEATHER = [
    "The sun was bright and the sky was blue.", "It was a warm and sunny day.",
    "It was a cool morning, and the grass was wet.", "The wind was soft, and the birds sang.",
    "It was a gray day, but it did not rain.", "The sky was full of white clouds.",
    "It was a lovely spring morning.", "The leaves were red and gold.",
    "It was a quiet evening, and the sun was going down.",
    "Snow covered the ground like a white blanket.", "A light rain had just stopped, and a rainbow came out.",
    "The air smelled of fresh flowers.", "It was a hot summer afternoon.",
    "Fluffy clouds floated across the sky.", "The morning was cold, but the sun was shining.",
    "It was a windy autumn day, and leaves danced in the air.", "The stars were coming out one by one.",
]
DETAILS = [  # optional color sentences sprinkled into stories
    "{N} had big eyes and a kind smile.", "{He} was the smallest {A} in the family.",
    "{N} liked to eat {a_food} for breakfast.", "Every morning, {N} said hello to the birds.",
    "{N} was good at making friends.", "{He} had soft fur and a little nose.",
    "{His} {rel} always told {him} to be kind.", "{N} loved to hum quiet songs.",
    "{He} often dreamed of faraway places.", "{N} could run faster than anyone {he} knew.",
    "{His} house had a round door and a small window.", "{N} was a little bit shy, but very kind.",
]

# ---------------------------------------------------------------------------------------------
# Held-out pairs: never together in a training document (as hero or helper)
# ---------------------------------------------------------------------------------------------


def _reserved_animal_object():
    out = set()
    for i, a in enumerate(ANIMALS):
        for j, o in enumerate(OBJECTS):
            if (i * 5 + j * 7) % 24 == 3:
                out.add((a, o))
    return out


def _reserved_name_place():
    out = set()
    for i, n in enumerate(NAMES):
        for j, p in enumerate(PLACE_LIST):
            if (i * 3 + j * 11) % 20 == 7:
                out.add((n, p))
    return out


HELDOUT_ANIMAL_OBJECT = _reserved_animal_object()
HELDOUT_NAME_PLACE = _reserved_name_place()

# ---------------------------------------------------------------------------------------------
# Sentence forms. Placeholders: {N} hero name, {A} hero animal, {a_A} "a dog"/"an owl",
# {he} {He} {him} {his} {His} hero pronouns, {O} object, {P} place, {atP} "at the beach",
# {H} helper, {HA} helper animal, {a_HA}, {hhe} {Hhe} {hhim} {hhis} helper pronouns, {adj},
# {oadj} object adjective, {col} color, {L} {L2} landmarks, {food}, {rel} relative.
# ---------------------------------------------------------------------------------------------

INTROS = [
    "Once upon a time, there was {a_adj_A} named {N}.",
    "Once upon a time, {a_adj_A} named {N} lived near the {P}.",
    "There was once {a_adj_A} called {N}.",
    "{N} was {a_adj_A} who lived near the {P}.",
    "In a small house near the {P}, there lived {a_adj_A} named {N}.",
    "Once there was {a_adj_A}. {His} name was {N}.",
    "Long ago, {a_adj_A} named {N} lived with {his} {rel}.",
    "Every day, {a_adj_A} named {N} woke up early and smiled.",
]
LIKES = [
    "{He} had {a_col_O}, and {he} loved it very much.",
    "{N} loved {his} {oadj} {O} more than anything.",
    "{His} favorite thing was {a_col_O}.",
    "{N} liked to play with {his} {O} every day.",
    "{He} always took {his} {oadj} {O} everywhere {he} went.",
    "{N} had {a_oadj_O} that {his} {rel} gave {him}.",
    "{N} the {A} loved {his} {oadj} {O} more than anything.",
]
GO_TO_PLACE = [
    "One day, {N} went to the {P} with {his} {O}.",
    "One morning, {N} took {his} {O} to the {P}.",
    "One sunny day, {N} and {his} {O} went to the {P}.",
    "One afternoon, {N} walked to the {P}. {He} brought {his} {O}.",
    "One day, {N} wanted to play {atP}, so {he} took {his} {O} and went.",
    "One day, {N} the {A} went to the {P} with {his} {O}.",
]
AT_PLACE = [
    "{He} saw {sights} {atP}.",
    "The {P} had {sights}.",
    "{N} looked around and saw {sights}.",
    "{He} liked the {P} because it had {sights}.",
]
FEEL_BAD = ["sad", "upset", "worried"]
FEEL_GOOD = ["happy", "glad", "proud", "excited"]
SAD_LINES = [
    "{N} felt very {bad}.",
    "{N} was so {bad} that {he} started to cry.",
    "{He} sat down and felt {bad}.",
    "{N} did not know what to do. {He} felt {bad}.",
    "Tears came to {his} eyes.",
    "The poor little {A} felt very {bad}.",
]
MEET_HELPER = [
    "Just then, {a_HA} named {H} came by.",
    "Then {N} saw {a_HA}. {Hhis} name was {H}.",
    "Soon, {a_friendly_HA} named {H} walked up to {him}.",
    "A {HA} called {H} heard {him} and came over.",
    "{H} the {HA} was walking by and saw {N}.",
]
ASK_WHY = [
    "\"Why are you {bad}?\" asked {H}.",
    "\"What is wrong, {N}?\" asked {H}.",
    "\"Are you okay?\" {H} asked.",
    "{H} asked, \"What happened?\"",
]
OFFER_HELP = [
    "\"Do not worry. I will help you,\" said {H}.",
    "\"I can help!\" said {H}.",
    "\"Let me help you,\" {H} said with a smile.",
    "{H} said, \"We can do it together.\"",
]
THANKS = [
    "\"Thank you, {H}!\" said {N}.",
    "{N} gave {H} a big hug and said thank you.",
    "\"You are a good friend, {H},\" said {N}.",
    "{N} smiled and said, \"Thank you so much!\"",
    "\"Thank you, {H}!\" said the little {A}.",
]
ENDINGS = [
    "From that day on, {N} and {H} were best friends.",
    "Then {N} and {H} {game} until the sun went down.",
    "{N} went home with {his} {O}, and {he} was very {good}.",
    "That night, {N} went to bed with {his} {O} and had sweet dreams.",
    "After that, {N} and {H} played together at the {P} every day.",
    "{N} learned that friends help each other.",
    "It was the best day ever, and {N} was {good}.",
    "{N} was a very {good} little {A}.",
    "The end.",
]
LESSONS = [
    "{N} learned that it is good to ask for help.",
    "{N} learned that sharing makes everyone happy.",
    "{N} learned that being brave is not so hard with a friend.",
    "{N} learned to be more careful with {his} things.",
]

# plot beats: each plot is a list of beat lists; a beat is one sentence form chosen at random
PLOT_LOST = [
    ["{He} played with {his} {O} all day {atP}.", "{N} {game} with {his} {O} {atP}.",
     "{He} threw {his} {O} up high and caught it again and again."],
    ["When it was time to go home, {N} could not find {his} {O}.",
     "Then {N} looked down. {His} {O} was gone!",
     "After a while, {N} saw that {his} {O} was missing.",
     "But when {he} looked for {his} {O}, it was not there."],
    SAD_LINES, MEET_HELPER, ASK_WHY,
    ["\"I lost my {O},\" said {N}.", "\"I cannot find my {O},\" {N} said.",
     "{N} said, \"My {O} is lost.\""],
    OFFER_HELP,
    ["They looked behind the {L} and under the {L2}.",
     "They looked near the {L}. Then they looked by the {L2}.",
     "{N} and {H} searched all over the {P}.",
     "They looked high and low, near the {L} and behind the {L2}."],
    ["At last, {H} found the {O} next to the {L2}.",
     "Then {N} saw something by the {L2}. It was {his} {O}!",
     "Finally, they found the {O} under the {L2}.",
     "Soon {H} shouted, \"I found it!\" The {O} was behind the {L2}."],
    ["{N} was so {good}.", "{N} jumped up and down. {He} was very {good}."],
    THANKS, ENDINGS,
]
PLOT_STUCK = [
    ["{He} played with {his} {O} {atP}.", "{N} {game} {atP}, and {his} {O} was with {him}."],
    ["Then the wind blew hard, and {his} {O} ended up {stuck}.",
     "Oh no! {His} {O} got stuck {stuck}.",
     "By accident, {N} dropped {his} {O}, and it landed {stuck}."],
    ["{N} tried to get it, but {he} could not reach it.",
     "{He} tried and tried, but the {O} did not move.",
     "{N} jumped, but {he} was too small."],
    SAD_LINES, MEET_HELPER, ASK_WHY,
    ["\"My {O} is stuck,\" said {N}.", "{N} pointed and said, \"My {O} is stuck {stuck}.\""],
    OFFER_HELP,
    ["{H} thought for a moment. Then {hhe} had an idea.",
     "{H} was tall and strong, so {hhe} reached up.",
     "{H} found a long stick and pushed very hard."],
    ["With one big push, the {O} came free!", "Soon the {O} was free, and {H} gave it back to {N}.",
     "They worked together, and at last they got the {O} out."],
    ["{N} was so {good}.", "{N} held {his} {O} tight and smiled."],
    THANKS, ENDINGS,
]
PLOT_BROKEN = [
    ["{N} played with {his} {O} {atP}.", "{He} {game} {atP} and took {his} {O} with {him}."],
    ["But then {he} fell, and {his} {O} broke.", "Suddenly, there was a loud crack. {His} {O} was broken!",
     "{N} dropped {his} {O} on a rock, and it broke in two."],
    SAD_LINES, MEET_HELPER, ASK_WHY,
    ["\"My {O} is broken,\" said {N}.", "{N} showed {H} the broken {O}."],
    ["\"I know how to fix it,\" said {H}.", "\"We can fix it,\" said {H}. \"Do not be sad.\""],
    ["{H} went home and came back with {fix}.", "{H} had {fix} in {hhis} bag."],
    ["They worked slowly and with care.", "{N} held the {O} while {H} fixed it.",
     "It took a long time, but they did not give up."],
    ["Soon the {O} was as good as new!", "At last, the {O} was fixed."],
    ["{N} was so {good}.", "{N} laughed and clapped {his} hands."],
    THANKS, ENDINGS,
]
PLOT_SCARED = [
    ["{N} wanted to go to the {P}, but {he} was scared.",
     "{N} wanted to play {atP}, but {he} was afraid to go alone."],
    ["\"What if it is dark and cold?\" {he} thought.", "{He} heard loud noises coming from the {P}.",
     "The {P} looked so big, and {N} felt very small."],
    ["{He} held {his} {O} tight.", "{He} took {his} {O} with {him}, because it made {him} feel safe.",
     "{N} hugged {his} {O} and stayed home."],
    MEET_HELPER,
    ["\"Why do you look so scared?\" asked {H}.", "\"What is wrong, {N}?\" asked {H}."],
    ["\"I want to go to the {P}, but I am scared,\" said {N}.",
     "{N} said, \"The {P} is too big for me.\""],
    ["\"I will go with you,\" said {H}.", "\"We can go together,\" said {H}. \"I will stay with you.\""],
    ["So {N} and {H} walked to the {P} side by side.", "Together, they went to the {P}."],
    ["It was not scary at all! {He} saw {sights}.", "The {P} was full of {sights}, and it was fun."],
    ["{N} played with {his} {O}, and {H} played too.", "They took turns with the {O} and laughed."],
    ["{N} felt brave and {good}.", "{N} was not scared anymore."],
    LESSONS[2:3], ENDINGS,
]
PLOT_FRIEND = [
    ["{N} went to the {P} with {his} {O}, but {he} had no one to play with.",
     "{N} was new {atP}. {He} had {his} {O}, but no friends."],
    ["{He} felt lonely.", "{N} sat alone and felt lonely.", "{He} wished {he} had a friend."],
    MEET_HELPER,
    ["\"Hello! Can I play with you?\" asked {H}.", "\"Hi, I am {H}. What is your name?\" asked {H}."],
    ["\"Yes! My name is {N},\" said {N}.", "{N} smiled. \"I am {N}. Let us play!\""],
    ["They played with the {O} all afternoon.", "{N} showed {H} {his} {O}, and they played with it together.",
     "They took turns with the {O}."],
    ["Then they {game}.", "After that, they {game} and laughed a lot."],
    ["{N} was not lonely anymore.", "{N} felt {good} to have a new friend."],
    ENDINGS,
]
PLOT_SHARE = [
    ["{N} had a new {O}. It was {col} and {oadj}. {He} took it to the {P}.", "{N} went to the {P} with {his} {oadj} {O}."],
    MEET_HELPER,
    ["\"Can I play with your {O}?\" asked {H}.", "{H} looked at the {O}. \"May I try it?\" {hhe} asked."],
    ["\"No, it is mine!\" said {N}.", "{N} held the {O} close and said no."],
    ["{H} felt sad and walked away.", "{H} looked down and sat by the {L}."],
    ["{N} played alone, but it was not fun.", "Soon {N} felt bad. Playing alone was boring."],
    ["{N} walked over to {H}. \"I am sorry. Let us play with my {O} together,\" {he} said.",
     "{N} gave {H} the {O}. \"Here, you can have a turn,\" {he} said."],
    ["{H} smiled, and they played with the {O} together.", "They took turns, and they had so much fun."],
    LESSONS[1:2], ENDINGS,
]
PLOT_GIFT = [
    ["{N} wanted to give {his} {rel} a gift.", "It was the birthday of {his} {rel}, and {N} wanted to make a gift."],
    ["{He} decided to give {his} {rel} {a_col_O}.", "{N} thought {a_oadj_O} would be the best gift."],
    ["{He} went to the {P} to look for one.", "So {N} went to the {P} to find a {O}."],
    ["But {he} could not find a {O} anywhere.", "{He} looked and looked, but there was no {O}."],
    SAD_LINES, MEET_HELPER, ASK_WHY,
    ["\"I want a {O} for my {rel}, but I cannot find one,\" said {N}."],
    ["\"I know where to find a {O},\" said {H}.", "\"I have an extra {O} at home,\" said {H}. \"You can have it.\""],
    ["{H} helped {N} get the {O}, and they wrapped it with {a_col} bow.",
     "Together they made the {O} look {oadj} and new."],
    ["When {N} gave the {O} to {his} {rel}, {his} {rel} smiled and gave {him} a big hug.",
     "{His} {rel} loved the {O} and said, \"Thank you, {N}!\""],
    ["{N} felt warm and {good} inside.", "{N} was so {good}."],
    ENDINGS,
]
PLOT_LOST_WAY = [
    ["{N} went to the {P} with {his} {O}.", "One day, {N} took {his} {O} and walked far into the {P}."],
    ["{He} {game} and did not look where {he} was going.", "{He} followed {a_col} butterfly for a long time."],
    ["When {he} looked up, {he} did not know where {he} was.", "Soon {N} was lost!"],
    SAD_LINES, MEET_HELPER, ASK_WHY,
    ["\"I am lost, and I want to go home,\" said {N}.", "{N} said, \"I cannot find my way home.\""],
    ["\"I know the way,\" said {H}. \"Follow me.\"", "\"Come with me,\" said {H}. \"I know this {P} well.\""],
    ["They walked past the {L} and over the {L2}.", "{H} led {N} past the {L} and the {L2}."],
    ["Soon, {N} could see {his} house!", "At last, they came to the house where {N} lived."],
    ["{His} {rel} was waiting at the door.", "{N} hugged {his} {rel} and {his} {O}."],
    THANKS, ENDINGS,
]
PLOT_LEARN = [
    ["{N} wanted to learn to {skill}.", "More than anything, {N} wanted to {skill}."],
    ["{He} tried {atP}, but {he} could not do it.", "{He} tried again and again {atP}, but {he} kept falling down."],
    ["{He} threw {his} {O} on the ground and felt {bad}.", "{N} sat down next to {his} {O} and felt {bad}."],
    MEET_HELPER,
    ["\"I can show you how,\" said {H}.", "\"I will teach you,\" said {H}. \"It is easy.\""],
    ["\"You have to {how},\" said {H}.", "{H} said, \"Just {how}.\""],
    ["{N} tried one more time.", "{N} took a deep breath and tried again."],
    ["This time {he} did it! {N} could {skill}!", "It worked! {N} was able to {skill}."],
    ["{N} picked up {his} {O} and laughed.", "{N} was very {good}, and {H} cheered."],
    THANKS, LESSONS[0:1], ENDINGS,
]
PLOTS = {
    "lost": PLOT_LOST, "stuck": PLOT_STUCK, "broken": PLOT_BROKEN, "scared": PLOT_SCARED,
    "friend": PLOT_FRIEND, "share": PLOT_SHARE, "gift": PLOT_GIFT, "lostway": PLOT_LOST_WAY,
    "learn": PLOT_LEARN,
}
PLOT_NAMES = list(PLOTS)

# how a prompt names the plot ("a dog named Max who ...")
PLOT_CLAUSES = {
    "lost": ["who lost {his} {O}", "who could not find {his} {O}"],
    "stuck": ["whose {O} got stuck", "who needed help to get {his} {O} back"],
    "broken": ["whose {O} broke", "who broke {his} {O}"],
    "scared": ["who was scared", "who was afraid to go out"],
    "friend": ["who wanted a friend", "who made a new friend"],
    "share": ["who learned to share", "who did not want to share"],
    "gift": ["who wanted to make a gift", "who made a gift for {his} {rel}"],
    "lostway": ["who got lost", "who could not find the way home"],
    "learn": ["who wanted to learn to {skill}", "who learned to {skill}"],
}
SUBJECTS = [
    "{a_A} named {N}", "{a_A} called {N}", "{N} the {A}", "{a_adj_A} named {N}",
]
PROMPTS = [
    "Tell me a story about {X}.", "Write a short story about {X}.", "Can you tell me a story about {X}?",
    "Please tell me a story about {X}.", "I want a story about {X}.", "Tell me a bedtime story about {X}.",
    "Write a story for kids about {X}.", "Make up a story about {X}.", "Tell a story about {X}.",
    "Could you write a story about {X}?",
]
# how an answer to a prompt that names its hero may begin: it says back what it was asked for
# (copying "{X}" after "about", the one place the prompt and the answer share), then tells it
ECHOES = [
    "Here is a story about {X}.", "Sure! Here is a story about {X}.", "Okay! Here is a story about {X}.",
    "Here is a short story about {X}.",
]
ECHO_RATE = 0.85
GENERIC_PROMPTS = [
    "Tell me a story.", "Tell me a short story.", "Can you tell me a story?", "Write a story for kids.",
    "Tell me a bedtime story.", "Please tell me a story.", "Make up a story.",
]
FACT_QA = [  # simple instruction/answer pairs besides stories
    ("What does {a_A} say?", "{a_A} says {sound}."),
    ("What sound does {a_A} make?", "{a_A} makes a sound like {sound}."),
    ("What does {a_A} like to eat?", "{a_A} likes to eat {afood}."),
    ("What do {A}s eat?", "Most {A}s like to eat {afood}."),
    ("Give me a name for {a_A}.", "How about {N}? {N} is a good name for {a_A}."),
    ("What can you see {atP}?", "{AtP}, you can see {sights}."),
    ("What can you do with {a_O}?", "You can {use_a}."),
    ("What is {a_O} for?", "With {a_O}, you can {use_it}."),
    ("What color is the sky?", "The sky is blue on a sunny day."),
    ("What color is the grass?", "The grass is green."),
    ("Say hello.", "Hello! I can tell you a story about animals and their friends."),
    ("Who are you?", "I am a small model that tells short stories about animals and their friends."),
    ("What can you do?", "I can tell short stories. Ask me for a story about {a_A} and a {O}."),
]


def article(word):
    return ("an " if word[0] in "aeiou" else "a ") + word


def pronouns(name, prefix=""):
    boy = name in BOY_NAMES
    he, him, his = ("he", "him", "his") if boy else ("she", "her", "her")
    return {prefix + "he": he, prefix + "He": he.capitalize(), prefix + "him": him,
            prefix + "his": his, prefix + "His": his.capitalize()}


class Story:
    """One draw of characters/place/object/plot, with everything a template may use."""

    def __init__(self, rng, name=None, animal=None, obj=None, place=None, plot=None, check_reserved=True):
        for _ in range(1000):
            n = name or rng.choice(NAMES)
            a = animal or rng.choice(ANIMALS)
            o = obj or rng.choice(OBJECTS)
            p = place or rng.choice(PLACE_LIST)
            h = rng.choice(NAMES)
            ha = rng.choice(ANIMALS)
            if h == n:
                continue
            if check_reserved and (
                (a, o) in HELDOUT_ANIMAL_OBJECT or (ha, o) in HELDOUT_ANIMAL_OBJECT
                or (n, p) in HELDOUT_NAME_PLACE or (h, p) in HELDOUT_NAME_PLACE
            ):
                if name and animal and obj and place:
                    raise ValueError("requested a held-out pairing")
                continue
            break
        else:
            raise RuntimeError("no valid draw")
        self.rng = rng
        self.plot = plot or rng.choice(PLOT_NAMES)
        self.name, self.animal, self.obj, self.place, self.helper, self.helper_animal = n, a, o, p, h, ha
        L, L2 = rng.sample(LANDMARKS, 2)
        skill = rng.choice(list(SKILLS))
        adj = rng.choice(HERO_ADJS)
        self.v = dict(
            N=n, A=a, a_A=article(a), adj=adj, a_adj_A=article(adj + " " + a), O=o, P=p,
            atP=f"{PLACES[p]} the {p}", AtP=f"{PLACES[p].capitalize()} the {p}",
            H=h, HA=ha, a_HA=article(ha), a_friendly_HA=article(rng.choice(["friendly", "kind", "old", "big", "little"]) + " " + ha),
            oadj=rng.choice(OBJ_ADJS), col=rng.choice(COLORS),
            a_col=None, a_col_O=None, a_oadj_O=None, L=L, L2=L2, food=rng.choice(FOODS),
            rel=rng.choice(RELATIVES), sights=PLACE_SIGHTS[p], stuck=rng.choice(STUCK_SPOTS),
            fix=rng.choice(FIXES), skill=skill, how=SKILLS[skill], sound=ANIMAL_SOUNDS[a],
            afood=ANIMAL_FOODS[a], a_food=None,
        )
        use = OBJECT_USES[o]
        his = pronouns(n)["his"]
        self.v["use_it"] = use.replace("{x}", "it")
        self.v["use_his"] = use.replace("{x}", his + " " + o)
        self.v["use_a"] = use.replace("{x}", article(o))
        self.v["a_O"] = article(o)
        self.v["a_col"] = article(self.v["col"])
        self.v["a_food"] = article(self.v["food"])
        self.v["a_col_O"] = article(self.v["col"] + " " + o)
        self.v["a_oadj_O"] = article(self.v["oadj"] + " " + o)
        self.v.update(pronouns(n))
        self.v.update(pronouns(h, "h"))
        self.v["Hhis"] = self.v["hHis"]
        self.v["Hhe"] = self.v["hHe"]

    def fill(self, template):
        v = dict(self.v)
        v["bad"] = self.rng.choice(FEEL_BAD)
        v["good"] = self.rng.choice(FEEL_GOOD)
        v["game"] = self.rng.choice(GAMES)
        s = template.format(**v)
        return s[0].upper() + s[1:]

    def text(self):
        r = self.rng
        out = [self.fill(r.choice(INTROS))]
        if r.random() < 0.5:
            out.append(self.fill(r.choice(WEATHER)))
        if r.random() < 0.4:
            out.append(self.fill(r.choice(DETAILS)))
        if self.plot not in ("share", "gift"):
            out.append(self.fill(r.choice(LIKES)))
            if r.random() < 0.7:
                out.append(self.fill(r.choice(USE_LINES)))
        if self.plot in ("lost", "stuck", "broken"):
            out.append(self.fill(r.choice(GO_TO_PLACE)))
            if r.random() < 0.6:
                out.append(self.fill(r.choice(AT_PLACE)))
        for beat in PLOTS[self.plot]:
            if beat is ENDINGS:
                k = r.choice([1, 1, 2])
                out.extend(self.fill(t) for t in r.sample(ENDINGS, k))
                if r.random() < 0.3:
                    out.insert(len(out) - k, self.fill(r.choice(USE_ENDINGS)))
            else:
                out.append(self.fill(r.choice(beat)))
        # 'The end.' only as the very last sentence
        out = [s for s in out if s != "The end."] + (["The end."] if "The end." in out else [])
        return " ".join(out)

    def prompt(self, parts):
        """A prompt that names the hero (always), and the object/place/plot as `parts` says."""
        return self.prompt_and_subject(parts)[0]

    def prompt_and_subject(self, parts):
        """(prompt, X): the prompt and what it asks a story about (the words after "about")."""
        r = self.rng
        v = self.v
        x = r.choice(SUBJECTS).format(**v)
        clause = []
        if "plot" in parts:
            clause.append(r.choice(PLOT_CLAUSES[self.plot]).format(**v))
        if "obj" in parts and not any(self.obj in c.split() for c in clause):
            clause.insert(0, r.choice((["and {his} {O}", "with {his} {O}", "and {his} {col} {O}"] if clause else ["and {his} {O}", "with a {O}", "and {his} {col} {O}", "who has a {O}"])).format(**v))
        if "place" in parts:
            clause.append(r.choice(["{atP}", "who lives near the {P}", "{atP}", "near the {P}"]).format(**v))
        subject = " ".join([x] + clause)
        return r.choice(PROMPTS).replace("{X}", subject), subject


def make_doc(rng):
    u = rng.random()
    if u < 0.08:  # facts
        st = Story(rng)
        q, a = rng.choice(FACT_QA)
        return {"kind": "chat", "user": st.fill(q), "assistant": st.fill(a)}
    st = Story(rng)
    if u < 0.30:
        return {"kind": "story", "text": st.text()}
    if u < 0.35:
        return {"kind": "chat", "user": rng.choice(GENERIC_PROMPTS), "assistant": st.text()}
    w = rng.random()
    if w < 0.5:
        parts = {"plot", "obj", "place"}
    elif w < 0.7:
        parts = {"plot", "obj"}
    elif w < 0.85:
        parts = {"obj", "place"}
    else:
        parts = set(rng.sample(["plot", "obj", "place"], rng.choice([0, 1])))
    user, subject = st.prompt_and_subject(parts)
    story = st.text()
    if rng.random() < ECHO_RATE:
        story = rng.choice(ECHOES).replace("{X}", subject) + " " + story
    return {"kind": "chat", "user": user, "assistant": story}


def generate(seed, n):
    rng = random.Random(seed)
    for _ in range(n):
        yield make_doc(rng)


def heldout_prompts(seed=12345, count=32):
    """Prompts whose (animal, object) and (name, place) pairs are both never seen in training."""
    rng = random.Random(seed)
    ao = sorted(HELDOUT_ANIMAL_OBJECT)
    np_ = sorted(HELDOUT_NAME_PLACE)
    rng.shuffle(ao)
    rng.shuffle(np_)
    out = []
    for i in range(count):
        a, o = ao[i % len(ao)]
        n, p = np_[i % len(np_)]
        plot = ["lost", "stuck", "broken", "friend", "share", "lostway", "scared", "gift", "learn"][i % 9]
        st = Story(rng, name=n, animal=a, obj=o, place=p, plot=plot, check_reserved=False)
        user = st.prompt({"plot", "obj", "place"})
        out.append({"prompt": user, "mentions": [n, a, o, p], "name": n, "animal": a, "object": o,
                    "place": p, "plot": plot})
    return out


_WORD = re.compile(r"[A-Za-z]+")


def vocabulary():
    """Every word the generator can write, lowercased: all words of every list and template."""
    words = set()

    def walk(x):
        if isinstance(x, str):
            words.update(w.lower() for w in _WORD.findall(re.sub(r"\{[^}]*\}", " ", x)))
        elif isinstance(x, dict):
            for k, v in x.items():
                walk(k)
                walk(v)
        elif isinstance(x, (list, tuple, set)):
            for v in x:
                walk(v)

    for name, val in globals().items():
        if name.isupper():
            walk(val)
    # suffixes made by templates: plural "{A}s", possessive-free "{N}s" ("Max" + "s"), "an"
    words.update(a + "s" for a in ANIMALS)
    words.update(n.lower() + "s" for n in NAMES)
    words.update(r + "s" for r in RELATIVES)
    words.update({"a", "an"})
    # words written from code rather than from the lists above: pronouns() and Story.prompt()
    words.update({"he", "she", "him", "his", "her", "lives", "has", "with", "and", "who", "near", "the"})
    return words


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--docs", type=int, default=1000)
    ap.add_argument("--out", default="-")
    ap.add_argument("--heldout", help="write the held-out prompts JSON here and exit")
    ap.add_argument("--vocab", action="store_true", help="print the vocabulary and exit")
    args = ap.parse_args()
    if args.vocab:
        print("\n".join(sorted(vocabulary())))
        return
    if args.heldout:
        data = {
            "about": "Held-out prompts for the demo model (tools/demo_model/story_corpus.py --heldout). "
            "No training document pairs their animal with their object, nor their name with their "
            "place. An answer passes the mention check when it contains every word of `mentions` "
            "(case-insensitive, whole words; the animal also matches its plural). `vocabulary`: every "
            "word the generator can write, lowercased (names included). Checked by "
            "tools/demo_model/eval_heldout.py.",
            "heldout_animal_object_pairs": sorted(map(list, HELDOUT_ANIMAL_OBJECT)),
            "heldout_name_place_pairs": sorted(map(list, HELDOUT_NAME_PLACE)),
            "prompts": heldout_prompts(),
            "vocabulary": sorted(vocabulary()),
        }
        with open(args.heldout, "w") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
        return
    f = sys.stdout if args.out == "-" else open(args.out, "w")
    for d in generate(args.seed, args.docs):
        f.write(json.dumps(d) + "\n")


if __name__ == "__main__":
    main()
