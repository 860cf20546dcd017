"""The export's check texts: instruction records on which every export compares its ONNX variants with PyTorch
(fp32 must match; int8 and fp16 are measured against the gate and the figures go into the manifest).

Origin and licence: every record below was written for this project and is released with it under Apache-2.0; none
is copied from a dataset. They are committed so that an export measures the same fidelity, and takes the same int8
decision, wherever it runs. Their mix follows the instruction data the tool selects from: short questions and
answers, worked arithmetic, rewriting and classification, code, role-play, and a few poor answers beside good ones
(a scorer's check needs a spread of scores). Lengths run from a few tokens to past 256 and past 512 tokens in
all-MiniLM-L6-v2's WordPiece (tests/test_export_embedder.py counts them), and `verification_texts` adds two
texts past any model's token limit."""

from __future__ import annotations

RECORDS: tuple[tuple[str, str, str], ...] = (
    # --- short: a few to a few dozen tokens ---------------------------------------------------------------------
    ("Give three tips for staying healthy.", "", "Eat a balanced diet, exercise regularly and get enough sleep."),
    ("Translate the sentence into French.", "The weather is nice today.", "Il fait beau aujourd'hui."),
    ("What is 17 times 23?", "", "17 times 23 is 391."),
    (
        "Classify the sentiment of the review.",
        "The battery died after two days and support never answered.",
        "Negative.",
    ),
    (
        "Write a haiku about autumn.",
        "",
        "Red leaves drift and fall / the river carries them south / cold wind, empty nests",
    ),
    ("Hi", "", "Hello! How can I help you today?"),
    ("Name the capital of Australia.", "", "The capital of Australia is Canberra."),
    ("Name the capital of Australia.", "", "Sydney."),
    ("What is the boiling point of water at sea level in Fahrenheit?", "", "212 degrees Fahrenheit."),
    ("Give an antonym for the word.", "generous", "Stingy."),
    ("Correct the spelling in the sentence.", "I recieved the pakage yesterday.", "I received the package yesterday."),
    ("Is the number prime?", "91", "No. 91 = 7 x 13."),
    ("Is the number prime?", "97", "Yes, 97 is prime: it has no divisor between 2 and 9."),
    ("Convert 5 kilometres to miles.", "", "5 kilometres is about 3.11 miles."),
    ("Which planet is closest to the Sun?", "", "Mercury."),
    ("Which planet is closest to the Sun?", "", "I think it is Venus, because it is the hottest planet."),
    (
        "Rewrite the sentence in the passive voice.",
        "The committee approved the new budget.",
        "The new budget was approved by the committee.",
    ),
    (
        "Extract the date from the text.",
        "The meeting has been moved to Thursday, 14 March, at 10 am.",
        "Thursday, 14 March.",
    ),
    ("Suggest a name for a bakery that sells sourdough bread.", "", "Rise & Crumb."),
    ("Tell me a joke.", "", "Why did the scarecrow win an award? Because he was outstanding in his field."),
    ("Tell me a joke.", "", "no"),
    ("Sort the numbers in ascending order.", "42, 7, 19, 3, 88", "3, 7, 19, 42, 88"),
    ("What does HTTP stand for?", "", "HyperText Transfer Protocol."),
    ("Translate into Spanish.", "Where can I buy a ticket?", "¿Dónde puedo comprar un billete?"),
    ("Classify the animal as a mammal, bird, reptile or fish.", "penguin", "Bird."),
    ("Classify the animal as a mammal, bird, reptile or fish.", "dolphin", "Fish, because it lives in the sea."),
    ("Give a synonym for happy.", "", "Cheerful."),
    (
        "Write a title for a blog post about saving money on groceries.",
        "",
        "Ten Small Habits That Cut Your Grocery Bill",
    ),
    ("Who wrote Pride and Prejudice?", "", "Jane Austen, published in 1813."),
    ("Find the odd one out.", "apple, banana, carrot, cherry", "Carrot: it is a vegetable, the others are fruit."),
    ("What is the plural of 'mouse'?", "", "Mice."),
    ("Complete the proverb.", "A stitch in time ...", "A stitch in time saves nine."),
    ("Detect the language of the text.", "Dziękuję bardzo za pomoc.", "Polish."),
    ("How many minutes are there in a day?", "", "There are 24 x 60 = 1,440 minutes in a day."),
    ("How many minutes are there in a day?", "", "About a thousand."),
    ("Give an example of a renewable energy source.", "", "Wind power."),
    ("Turn the list into a sentence.", "eggs, flour, milk", "You will need eggs, flour and milk."),
    ("Write a SQL query that counts the rows of the table orders.", "", "SELECT COUNT(*) FROM orders;"),
    ("What is the square root of 144?", "", "12."),
    (
        "Respond to the customer politely.",
        "Your app deleted all my notes!!!",
        "I'm very sorry about your notes. Could you tell me your phone model and app version? Deleted notes stay "
        "in the Trash folder for 30 days, so we may be able to restore them together.",
    ),
    # --- medium: one to a few paragraphs ------------------------------------------------------------------------
    (
        "Explain how a bicycle stays upright.",
        "",
        "A moving bicycle stays upright mostly because the rider steers into the direction of a fall, which moves "
        "the wheels back under the centre of mass. The geometry of the front fork (trail) makes the front wheel "
        "turn into a lean by itself, and the spinning wheels add a small gyroscopic effect. At walking pace these "
        "effects are weak, which is why slow riding needs more effort to balance.",
    ),
    (
        "Summarise the paragraph.",
        "Photosynthesis is the process by which green plants use sunlight, water and "
        "carbon dioxide to make glucose and oxygen. It takes place mainly in the leaves, inside chloroplasts, "
        "which contain the pigment chlorophyll.",
        "Plants turn light, water and CO2 into sugar and oxygen.",
    ),
    (
        "Maria buys 3 notebooks at $4 each and 2 pens at $1.50 each. She pays with a $20 bill. How much change "
        "does she get?",
        "",
        "The notebooks cost 3 x $4 = $12. The pens cost 2 x $1.50 = $3. Together she spends $12 + $3 = $15. "
        "Her change is $20 - $15 = $5.\n#### 5",
    ),
    (
        "A train travels 180 km in 2 hours and then 120 km in 1.5 hours. What is its average speed for the whole trip?",
        "",
        "Total distance: 180 + 120 = 300 km. Total time: 2 + 1.5 = 3.5 hours. Average speed = 300 / 3.5, which is "
        "about 85.7 km/h.\n#### 85.7",
    ),
    (
        "A train travels 180 km in 2 hours and then 120 km in 1.5 hours. What is its average speed for the whole trip?",
        "",
        "The speeds are 90 and 80, so the average is 85 km/h.",
    ),
    (
        "Tom has twice as many marbles as Ben. Together they have 36 marbles. How many does Tom have?",
        "",
        "Let Ben have b marbles; Tom has 2b. Then b + 2b = 36, so 3b = 36 and b = 12. Tom has 2 x 12 = 24 "
        "marbles.\n#### 24",
    ),
    (
        "A recipe needs 250 g of flour for 10 biscuits. How much flour is needed for 24 biscuits?",
        "",
        "Flour per biscuit: 250 / 10 = 25 g. For 24 biscuits: 24 x 25 = 600 g.\n#### 600",
    ),
    (
        "A shop sells a jacket for $80 and then reduces the price by 25%. A week later it raises the new price by "
        "10%. What does the jacket cost now?",
        "",
        "After the reduction the price is 80 x 0.75 = $60. Raising $60 by 10% adds $6, so the jacket now costs "
        "$66.\n#### 66",
    ),
    (
        "Write a Python function that returns the factorial of n.",
        "",
        '```python\ndef factorial(n: int) -> int:\n    if n < 0:\n        raise ValueError("n must be >= 0")\n'
        "    result = 1\n    for i in range(2, n + 1):\n        result *= i\n    return result\n```\n"
        "The loop multiplies the numbers from 2 to n; factorial(0) and factorial(1) return 1.",
    ),
    ("Write a Python function that returns the factorial of n.", "", "def f(n): return n * f(n - 1)"),
    (
        "Explain the difference between a list and a tuple in Python.",
        "",
        "Both hold an ordered sequence of items. A list is mutable: you can append, remove or change its items "
        "after it is made. A tuple is immutable: once created it cannot change, which makes it hashable (usable as "
        "a dictionary key when its items are hashable) and signals that the data is a fixed record, such as a pair "
        "of coordinates. Lists use square brackets, tuples use parentheses.",
    ),
    (
        "Find the bug in the code.",
        "def average(xs):\n    return sum(xs) / len(xs) - 1",
        "The function subtracts 1 from the average: operator precedence makes it (sum / len) - 1. Remove the "
        '"- 1". It also fails with ZeroDivisionError on an empty list, so check for that first:\n\n'
        'def average(xs):\n    if not xs:\n        raise ValueError("average of an empty list")\n'
        "    return sum(xs) / len(xs)",
    ),
    (
        "Write a short email asking a colleague to review a document by Friday.",
        "",
        "Subject: Review of the Q3 report by Friday?\n\nHi Sam,\n\nI've finished the draft of the Q3 report and "
        "shared it in our team folder. Could you review it and leave comments by Friday afternoon? The sections on "
        "costs and hiring would benefit most from a second pair of eyes.\n\nThanks a lot,\nPriya",
    ),
    ("Write a short email asking a colleague to review a document by Friday.", "", "Review my document."),
    (
        "Give me a packing list for a three-day hiking trip.",
        "",
        "- Backpack (40-50 litres) with a rain cover\n- Tent, sleeping bag and sleeping mat\n- Stove, fuel, a pot "
        "and a lighter\n- Food for three days plus one spare meal\n- Water bottles and a filter\n- Map, compass and "
        "a charged phone\n- Layers: base layer, fleece, waterproof jacket and trousers\n- Spare socks, hat and "
        "gloves\n- First-aid kit, sun cream, head torch\n- A bag to carry out your rubbish",
    ),
    (
        "Describe the water cycle.",
        "",
        "Water evaporates from oceans, lakes and rivers when the sun heats it, and plants release water vapour "
        "through their leaves. The vapour rises, cools and condenses into tiny droplets that form clouds. When the "
        "droplets grow heavy they fall as precipitation: rain, snow or hail. The water then runs off into rivers "
        "and the sea or soaks into the ground, where it feeds groundwater, and the cycle begins again.",
    ),
    (
        "Explain what inflation is to a ten-year-old.",
        "",
        "Inflation means that things slowly get more expensive over time. If a chocolate bar costs one dollar this "
        "year and one dollar and ten cents next year, the same money buys a little less. That is why your "
        "grandparents remember sweets being much cheaper when they were young.",
    ),
    (
        "Pretend you are a pirate captain and welcome a new crew member aboard.",
        "",
        "Arr, welcome aboard the Salty Gull, ye scrawny landlubber! I be Captain Redbeard, and this deck be your "
        "home now. Ye'll swab the planks at dawn, mend the sails by noon, and keep yer eyes on the horizon for "
        "merchant ships. Obey the code, share the plunder fair, and never touch the captain's rum. Now fetch a "
        "bucket, the sea waits for no one!",
    ),
    (
        "You are a museum guide. Introduce the dinosaur hall to a group of visitors.",
        "",
        "Good morning, everyone, and welcome to the dinosaur hall! The skeleton towering above you is a "
        "Tyrannosaurus rex, found in Montana in 1990; it lived about 67 million years ago and was one of the last "
        "large dinosaurs. To your left, the long-necked giant is a Diplodocus, which could reach 26 metres from "
        "head to tail. As we walk, look for the small feathered dinosaurs near the window: they are close "
        "relatives of today's birds. Please do not touch the bones, but feel free to ask questions at any time.",
    ),
    (
        "Compare renting and buying a home.",
        "",
        "Renting is flexible: you can move easily, repairs are the landlord's job, and you need only a deposit. "
        "But rent rises over time and you build no ownership. Buying needs a large down payment and brings "
        "maintenance costs, property taxes and less freedom to move, yet each mortgage payment builds equity and "
        "your housing cost is more predictable with a fixed rate. Buying usually pays off if you stay five years "
        "or longer; renting suits people who may move soon or want to keep their savings liquid.",
    ),
    (
        "What are the main causes of the First World War?",
        "",
        "Historians usually name four long-term causes: militarism (an arms race, especially between Britain and "
        "Germany at sea), alliances (the Triple Entente and the Triple Alliance, which turned a local conflict into "
        "a general one), imperialism (rivalry over colonies and markets) and nationalism (notably in the Balkans). "
        "The immediate trigger was the assassination of Archduke Franz Ferdinand in Sarajevo on 28 June 1914, "
        "after which Austria-Hungary's ultimatum to Serbia set the alliance system in motion.",
    ),
    ("What are the main causes of the First World War?", "", "The war started because of Hitler invading Poland."),
    (
        "Rewrite the text to make it more formal.",
        "Hey guys, the meeting's off tomorrow cause the boss is sick. We'll do it next week sometime.",
        "Please note that tomorrow's meeting has been cancelled because the manager is unwell. It will be "
        "rescheduled for next week, and a new invitation will follow.",
    ),
    (
        "Generate a list of five interview questions for a data analyst.",
        "",
        "1. Walk me through a project where your analysis changed a decision.\n2. How do you check a dataset for "
        "errors before analysing it?\n3. Explain the difference between correlation and causation with an "
        "example.\n4. Write a query that finds the top three customers by revenue in each region.\n5. How would "
        "you present an uncertain result to a non-technical manager?",
    ),
    (
        "Use the calculator tool to answer: what is 15% of 2,340?",
        "",
        "Calculator(2340 * 0.15) -> 351. 15% of 2,340 is 351.",
    ),
    (
        "Use the search tool to find the height of Mount Kilimanjaro, then answer.",
        "",
        'Search("Mount Kilimanjaro height") -> "Kilimanjaro, 5,895 m (19,341 ft)". Mount Kilimanjaro is 5,895 '
        "metres (19,341 feet) high.",
    ),
    (
        "Convert the recipe quantities from cups to grams.",
        "2 cups flour, 1 cup sugar, 0.5 cup butter",
        "About 250 g flour, 200 g sugar and 113 g butter (using 125 g per cup of flour, 200 g per cup of sugar and "
        "227 g per cup of butter).",
    ),
    (
        "Explain why the sky is blue.",
        "",
        "Sunlight contains all colours. When it passes through the atmosphere, air molecules scatter short "
        "wavelengths much more strongly than long ones (Rayleigh scattering, proportional to 1/wavelength^4). Blue "
        "light is therefore scattered across the whole sky and reaches our eyes from every direction, while the "
        "direct sunlight looks slightly yellow. At sunset the light crosses more air, most blue is scattered away, "
        "and the remaining light looks red and orange.",
    ),
    ("Explain why the sky is blue.", "", "Because it reflects the ocean."),
    (
        "Write a limerick about a cat who loves to sleep.",
        "",
        "There once was a cat named Lenore,\nwho napped on the rug by the door.\nShe'd wake for a snack,\nthen "
        "curl up right back,\nand dream of the naps she'd have more.",
    ),
    (
        "Give feedback on the thesis statement.",
        "Social media is bad.",
        "The statement is too broad and too vague to argue. Say which part of social media, for whom, and why: for "
        'example, "Endless-scroll feeds harm teenagers\' sleep because they remove natural stopping points." A '
        "specific, debatable claim gives your essay a clear direction and evidence to look for.",
    ),
    (
        "Outline the steps to change a flat tyre.",
        "",
        "1. Stop on flat, safe ground, switch on the hazard lights and apply the handbrake.\n2. Loosen the wheel "
        "nuts half a turn while the wheel is still on the ground.\n3. Place the jack at the marked lifting point "
        "and raise the car until the tyre is off the ground.\n4. Remove the nuts and the wheel, fit the spare, and "
        "tighten the nuts by hand.\n5. Lower the car, then tighten the nuts fully in a star pattern.\n6. Check the "
        "spare's pressure and repair or replace the flat tyre soon.",
    ),
    (
        "Identify the logical fallacy.",
        "Everyone I know likes this phone, so it must be the best phone on the market.",
        "This is an appeal to popularity (argumentum ad populum), combined with a hasty generalisation from a "
        "small, unrepresentative sample: the speaker's friends.",
    ),
    (
        "Write a product description for a reusable water bottle.",
        "",
        "Stay hydrated wherever the day takes you. Our 750 ml bottle is made of double-walled stainless steel that "
        "keeps drinks cold for 24 hours and hot for 12. The leak-proof lid fits in one hand, the powder-coated "
        "finish won't slip, and there is no plastic taste, ever. Dishwasher safe and built to last for years, it "
        "replaces hundreds of single-use bottles.",
    ),
    (
        "A garden is 12 m long and 7 m wide. A path 1 m wide runs around the inside of its edge. What area is left "
        "for planting?",
        "",
        "The path takes 1 m from every side, so the planting area is (12 - 2) by (7 - 2) = 10 m by 5 m = 50 square "
        "metres.\n#### 50",
    ),
    (
        "Lena reads 15 pages on weekdays and 40 pages on each weekend day. How many pages does she read in two weeks?",
        "",
        "One week: 5 x 15 = 75 weekday pages and 2 x 40 = 80 weekend pages, 155 in all. Two weeks: 2 x 155 = "
        "310 pages.\n#### 310",
    ),
    (
        "Lena reads 15 pages on weekdays and 40 pages on each weekend day. How many pages does she read in two weeks?",
        "",
        "15 + 40 = 55 pages, times 2 is 110.\n#### 110",
    ),
    (
        "A tank holds 600 litres. One pipe fills it in 30 minutes and a drain empties it in 60 minutes. If both "
        "are open, how long does it take to fill the empty tank?",
        "",
        "The pipe adds 600 / 30 = 20 litres a minute and the drain removes 600 / 60 = 10 litres a minute, so the "
        "tank gains 10 litres a minute. Filling 600 litres takes 600 / 10 = 60 minutes.\n#### 60",
    ),
    (
        "Write a JavaScript function that checks whether a string is a palindrome.",
        "",
        '```javascript\nfunction isPalindrome(text) {\n  const s = text.toLowerCase().replace(/[^a-z0-9]/g, "");'
        '\n  return s === [...s].reverse().join("");\n}\n```\nIt ignores case, spaces and punctuation, so '
        'isPalindrome("A man, a plan, a canal: Panama") returns true.',
    ),
    (
        "Explain what this regular expression matches.",
        "^\\d{3}-\\d{4}$",
        "A whole string made of exactly three digits, a hyphen and four digits, such as 555-1234. The ^ and $ "
        "anchors stop it from matching inside a longer string.",
    ),
    (
        "Write a bash command that counts the lines of every .py file in the current folder.",
        "",
        "wc -l *.py\n\nIt prints the line count of each file and a total at the end. For subfolders too, use: "
        "find . -name '*.py' -exec wc -l {} +",
    ),
    (
        "What is the time complexity of binary search, and why?",
        "",
        "O(log n). Each comparison halves the part of the sorted array that can still hold the target, so after k "
        "steps n / 2^k elements remain, and the search ends when that reaches 1, that is after about log2(n) "
        "steps.",
    ),
    (
        "You are a friendly librarian. A child asks you for a book about space.",
        "",
        "Oh, space is one of my favourite topics! How old are you, and do you like stories or facts best? If you "
        "like facts, this big picture book about the planets has photos taken by real spacecraft. If you like "
        "stories, there's a funny one about an astronaut cat who gets lost on the Moon. You can borrow both for "
        "three weeks.",
    ),
    (
        "Act as a personal trainer and give me a 20-minute workout with no equipment.",
        "",
        "Warm up for 3 minutes: marching on the spot and arm circles. Then do 4 rounds of: 40 seconds of squats, "
        "20 seconds rest; 40 seconds of push-ups (on your knees if needed), 20 seconds rest; 40 seconds of "
        "lunges, 20 seconds rest; 40 seconds of plank, 20 seconds rest. Finish with 1 minute of stretching your "
        "legs and shoulders. Keep your back straight and stop if anything hurts.",
    ),
    ("Act as a personal trainer and give me a 20-minute workout with no equipment.", "", "Just go for a run."),
    (
        "Use the weather tool to tell me whether I need an umbrella in Dublin tomorrow.",
        "",
        'Weather("Dublin", "tomorrow") -> "light rain from 11:00 to 16:00, 14 C". Yes: light rain is '
        "expected from late morning until the afternoon, so take an umbrella.",
    ),
    (
        "Use the calendar tool to find a free hour for a meeting on Monday afternoon.",
        "",
        'Calendar.free_slots("Monday", "13:00", "18:00", duration=60) -> ["14:00-15:00", "16:30-17:30"]. '
        "You are free from 14:00 to 15:00 and from 16:30 to 17:30 on Monday.",
    ),
    (
        "Write two sentences describing a busy market in the morning.",
        "",
        "Before the sun is fully up, the stalls are already stacked with oranges, flat breads and bunches of "
        "coriander, and the air smells of coffee and wet stone. Traders call out prices over the rattle of "
        "handcarts while early shoppers squeeze between crates with their baskets.",
    ),
    (
        "Paraphrase the sentence.",
        "The project was delayed due to unforeseen technical difficulties.",
        "Unexpected technical problems held the project up.",
    ),
    (
        "Answer the question about the text.",
        "Text: Ada Lovelace wrote the first published algorithm intended for "
        "Charles Babbage's Analytical Engine in 1843. Question: Whose machine was the algorithm written for?",
        "Charles Babbage's Analytical Engine.",
    ),
    (
        "Answer the question about the text.",
        "Text: Ada Lovelace wrote the first published algorithm intended for "
        "Charles Babbage's Analytical Engine in 1843. Question: Whose machine was the algorithm written for?",
        "Ada Lovelace.",
    ),
    (
        "List the first five elements of the periodic table.",
        "",
        "Hydrogen (H), helium (He), lithium (Li), beryllium (Be) and boron (B).",
    ),
    # --- long: past 256 tokens ----------------------------------------------------------------------------------
    (
        "Explain how vaccines train the immune system.",
        "",
        "A vaccine shows the immune system a harmless version or piece of a pathogen so that it can prepare a "
        "defence before meeting the real thing. Depending on the type, the vaccine contains a weakened or "
        "inactivated virus, a purified protein from its surface, or genetic instructions (as in mRNA vaccines) "
        "that let our own cells make that protein for a short time.\n\nThe first responders are cells of the "
        "innate immune system, such as dendritic cells. They take up the foreign material, break it into "
        "fragments called antigens, and carry them to the lymph nodes. There they present the antigens to T "
        "cells. Helper T cells that recognise the antigen multiply and activate B cells, which begin producing "
        "antibodies that fit the antigen like a key in a lock. Cytotoxic T cells, in turn, learn to recognise and "
        "kill infected cells.\n\nThis first response takes one to two weeks. Its most important product is "
        "memory: long-lived memory B and T cells remain in the body after the response has faded. If the real "
        "pathogen arrives later, these cells recognise it within hours and mount a faster and much stronger "
        "response, often clearing the infection before it causes serious illness.\n\nSome vaccines need booster "
        "doses because memory fades over time or because the pathogen changes its surface proteins, as influenza "
        "does every year. Adjuvants, substances added to some vaccines, strengthen the initial alarm signal so "
        "that a smaller amount of antigen produces a lasting response. Finally, when enough people are immune, a "
        "pathogen has too few hosts to spread, which also protects those who cannot be vaccinated.",
    ),
    (
        "You are a detective in 1920s London. Describe how you solved the case of the missing necklace.",
        "",
        "The fog had not lifted from Belgravia when Lady Ashcombe summoned me, her voice trembling down the "
        "telephone line. Her diamond necklace, a wedding gift from the late Lord Ashcombe, had vanished from a "
        "locked drawer between midnight and breakfast.\n\nI began, as always, with the household. The butler, "
        "Hargreaves, had served the family for thirty years and kept the only other key. The new maid, a nervous "
        "girl named Elsie, had been hired a fortnight before. The nephew, Mr Julian Pryce, had arrived for the "
        "weekend with debts that the whole of Mayfair whispered about.\n\nThe drawer showed no scratches, so the "
        "thief had used a key. Hargreaves produced his at once, still on the chain at his waist. Yet I noticed a "
        "faint grey smear of wax on its bow. Someone had pressed it into a mould to make a copy, and recently.\n\n"
        "Elsie confessed, between sobs, that Mr Pryce had asked her to bring him the butler's keys while "
        "Hargreaves slept, promising her a month's wages for the favour. She swore she had not known why. A visit "
        "to a locksmith in Soho confirmed that a young gentleman with a silver-topped cane had ordered a small "
        "key cut from a wax impression on Thursday.\n\nI found Mr Pryce at the card tables of his club that same "
        "evening. He denied everything until I mentioned the pawnbroker on Cheapside, whose ledger held his "
        "signature and a description of a diamond necklace. The necklace was back in its drawer by midnight, and "
        "Lady Ashcombe, to her credit, asked only that her nephew be sent abroad rather than to prison. Elsie kept "
        "her place; Hargreaves, I am told, now sleeps with his keys under his pillow.",
    ),
    (
        "Write a cover letter for a junior software developer position.",
        "Company: Northwind Logistics. Skills: Python, SQL, Git, a final-year project on route planning.",
        "Dear Hiring Manager,\n\nI am writing to apply for the Junior Software Developer position at Northwind "
        "Logistics. I recently completed my degree in computer science, and your work on delivery planning "
        "matches the problem I spent my final year solving.\n\nFor my final-year project I built a route planner "
        "for a local courier company. Written in Python, it reads the day's orders from a PostgreSQL database, "
        "groups them by area and uses a simple heuristic followed by local search to order each driver's stops. "
        "On a month of real orders it shortened the total distance driven by 11% compared with the routes the "
        "dispatchers planned by hand. The project taught me to write SQL that stays fast on large tables, to test "
        "code that depends on messy real data, and to explain technical trade-offs to people who are not "
        "developers.\n\nI work with Git every day, review code with classmates through pull requests, and I am "
        "comfortable writing unit tests before I change a piece of code. During a summer internship at a small "
        "web agency I fixed bugs in a Django application, added a reporting page used by the sales team, and "
        "learnt how much a clear commit message helps the next person.\n\nI would be glad to bring this "
        "experience to Northwind, and I am eager to learn from an experienced team. Thank you for considering my "
        "application; I look forward to the possibility of discussing it with you.\n\nYours sincerely,\nAlex "
        "Morgan",
    ),
    (
        "Summarise the article in three sentences.",
        "Cities around the world are experimenting with car-free zones in their historic centres. Supporters "
        "argue that removing cars reduces air pollution and noise, makes streets safer for pedestrians and "
        "cyclists, and brings more customers to local shops, who walk past shop windows instead of driving past "
        "them. Critics worry that shops lose customers who arrive by car, that deliveries become harder, and "
        "that traffic simply moves to the surrounding neighbourhoods. Early evidence from several European "
        "cities suggests that retail sales in the car-free areas stayed stable or rose after the first year, "
        "while nitrogen dioxide levels fell by up to a third. However, residents of neighbouring districts "
        "reported more congestion, and some cities had to add bus lines and park-and-ride sites to keep the "
        "centre accessible for older people and visitors from the countryside. Planners now say that the "
        "success of such zones depends less on the ban itself than on the alternatives offered: frequent public "
        "transport, safe bicycle routes, and delivery windows for businesses.",
        "Many cities are closing their historic centres to cars to cut pollution and noise and make streets "
        "safer. Early results show stable or higher shop sales and much lower nitrogen dioxide, though nearby "
        "districts saw more traffic. Planners conclude that such zones work when good public transport, cycling "
        "routes and delivery arrangements come with them.",
    ),
    (
        "Explain the difference between TCP and UDP, with examples of when to use each.",
        "",
        "TCP (Transmission Control Protocol) and UDP (User Datagram Protocol) both carry data between programs "
        "over IP, but they make very different promises.\n\nTCP is connection-oriented. The two sides first "
        "perform a handshake, then TCP numbers every byte, acknowledges what arrives, and retransmits what is "
        "lost. Data is delivered complete and in order, and TCP slows the sender down when the network or the "
        "receiver is congested. The price is extra latency: a lost packet holds up everything behind it until it "
        "is resent.\n\nUDP is connectionless. Each datagram is sent on its own with a small header and no "
        "handshake, acknowledgement or retransmission. Datagrams may arrive out of order, twice, or not at all, "
        "and the application must cope. In exchange UDP adds almost no delay and lets the application decide "
        "what to do about loss.\n\nUse TCP when every byte matters and a short delay is acceptable: web pages, "
        "file transfers, email, database connections, and most APIs. Use UDP when fresh data is worth more than "
        "complete data: voice and video calls, live streaming, online games that send the players' positions "
        "many times a second, and DNS lookups, which fit in a single packet and simply retry on a timeout. Newer "
        "protocols such as QUIC, used by HTTP/3, build their own reliable streams on top of UDP to avoid TCP's "
        "head-of-line blocking while keeping reliability.",
    ),
    # --- very long: past 512 tokens -----------------------------------------------------------------------------
    (
        "Write a beginner's guide to growing tomatoes at home.",
        "",
        "Tomatoes are one of the most rewarding plants for a new gardener: they grow quickly, tolerate small "
        "spaces, and a single healthy plant can give several kilograms of fruit over a summer. This guide covers "
        "the whole season, from choosing a variety to the last harvest.\n\n1. Choose a variety. Determinate, or "
        "bush, tomatoes stop growing at about a metre and ripen most of their fruit within a few weeks, which "
        "suits pots and balconies. Indeterminate, or cordon, tomatoes keep growing and fruiting until the first "
        "frost and need tall supports. Cherry tomatoes are the most forgiving; large beefsteak types need a long, "
        "warm summer.\n\n2. Start the seeds. Sow them indoors six to eight weeks before the last expected frost, "
        "a few millimetres deep in moist seed compost. Keep them warm, around 20 to 25 degrees Celsius, until "
        "they sprout, then give them as much light as possible: a sunny windowsill works, but seedlings that lean "
        "and stretch are asking for more light. When the first true leaves appear, move each seedling into its "
        "own small pot, burying the stem a little deeper than before, because tomatoes grow roots along buried "
        "stems.\n\n3. Harden off and plant out. A week or two before planting, put the young plants outside for "
        "a few hours a day, increasing the time gradually, so that they get used to wind and direct sun. Plant "
        "them out when nights stay above 10 degrees. In the ground, space them about 50 to 60 centimetres apart; "
        "in containers, use a pot of at least 20 litres per plant with good drainage holes.\n\n4. Give them sun, "
        "water and food. Tomatoes need six to eight hours of direct sun a day. Water deeply and regularly at the "
        "base of the plant, not on the leaves: irregular watering causes split fruit and blossom end rot, the "
        "black patch at the bottom of the tomato. Once the first flowers open, feed every week or two with a "
        "fertiliser high in potassium.\n\n5. Support and prune. Tie cordon tomatoes loosely to a stake or string "
        "as they grow, and pinch out the side shoots that appear between the main stem and the leaf branches, so "
        "that the plant puts its energy into fruit. Bush tomatoes need no pruning. When a cordon plant has set "
        "four to six trusses of flowers, pinch out its growing tip.\n\n6. Watch for problems. Yellowing lower "
        "leaves are normal late in the season, but brown patches that spread quickly in wet weather can be "
        "blight: remove affected leaves at once and avoid wetting the foliage. Aphids and whitefly can be washed "
        "off with water or controlled by planting marigolds or basil nearby.\n\n7. Harvest. Pick tomatoes when "
        "they are fully coloured and give slightly when pressed. At the end of the season, green fruit will "
        "ripen indoors in a drawer next to a banana. Save a few seeds from your best open-pollinated plants, and "
        "next year you can start again with tomatoes of your own.",
    ),
    (
        "As a seasoned ship's navigator, tell the story of the night your ship nearly ran aground, and what you "
        "learnt from it.",
        "",
        "It was my fourth winter as second officer on the Maren, a coastal freighter carrying timber along the "
        "Norwegian coast, and I still thought of myself as careful. We had left Ålesund in the late afternoon "
        "with a forecast of rising wind, nothing the old ship had not seen a hundred times. The captain went "
        "below at ten, leaving me the watch with a young deckhand named Per and a course laid out in pencil on "
        "the chart, the same course we had sailed all autumn.\n\nBy midnight the wind had swung round to the "
        "north-west and was blowing harder than forecast. Snow came in squalls, and between them the coast "
        "lights appeared and vanished like someone opening and closing a door. The radar showed the islands well "
        "enough, but the screen was cluttered by the sea itself, and I told myself that the ship was where the "
        "pencil line said she was. That was my first mistake: I trusted the plan more than the evidence.\n\n"
        "At half past twelve Per said quietly that the light on the point looked wrong. I looked, and it did: it "
        "was flashing in groups of three, and the light I expected flashed in twos. I counted again, slowly, with "
        "the stopwatch, and checked the list of lights. Three flashes belonged to a headland two miles further "
        "east than the one I had in mind. The current and the wind had been setting us towards the shore for an "
        "hour, and my dead reckoning had not allowed for either.\n\nI ordered the wheel hard to port and rang "
        "the engine room for full ahead. For a long minute the Maren seemed not to answer at all; then her bow "
        "came round, heavily, into the sea, and spray covered the bridge windows. When the next squall cleared I "
        "could see breaking water on the rocks off our starboard quarter, white against the black, far closer "
        "than any navigator ever wants to see it. The echo sounder showed eleven metres under the keel, then "
        "fourteen, then twenty, and I breathed again.\n\nThe captain came up in his coat, looked at the chart, "
        'at the radar and at me, and said only, "Write it all down." I did, and the next morning he made me '
        "explain every step to him. He did not shout. He asked why I had not taken a fix every fifteen minutes "
        "in weather like that, why I had not woken him when the wind changed, and why it had been the deckhand, "
        "not the officer of the watch, who counted the flashes.\n\nI have carried those questions through thirty "
        "years at sea. A plan is only a guess about the future; the ship lives in the present, and the present "
        "must be measured again and again. When the conditions change, the plan must be checked against them, "
        "and the people who can help must be called, however late it is. And listen to the youngest person on "
        "the bridge: Per saw what I did not, because he was looking at the light and not at the pencil line.",
    ),
    (
        "Explain, step by step, how a bill becomes a law in the United States.",
        "",
        "In the United States a bill must pass both chambers of Congress in identical form and then be signed by "
        "the President, or survive a veto. The path usually looks like this.\n\nStep 1: Drafting and "
        "introduction. Anyone can suggest an idea for a law, but only a member of Congress can introduce a bill. "
        "A representative places it in the hopper, a box on the side of the House clerk's desk; a senator "
        "introduces it on the Senate floor. The bill receives a number, such as H.R. 1234 or S. 567, and is sent "
        "to the committee that handles its subject. Bills that raise revenue must start in the House.\n\nStep "
        "2: Committee work. Committees and their subcommittees do most of the detailed work. They hold hearings "
        "where experts, officials and interest groups testify, and then they mark up the bill, debating and "
        "voting on amendments line by line. Most bills die here, simply because the committee never takes them "
        "up. If the committee approves the bill, it reports it to the full chamber with a written report that "
        "explains its purpose.\n\nStep 3: Floor action. In the House, the Rules Committee sets the terms of "
        "debate: how long members may speak and which amendments may be offered. In the Senate debate is "
        "usually unlimited, so a minority can filibuster, and ending debate normally requires 60 votes to invoke "
        "cloture. After debate, the chamber votes; a simple majority of those voting passes the bill.\n\nStep 4: "
        "The other chamber. The bill then goes to the other chamber, which can pass it as it is, amend it, "
        "ignore it or write its own version. If the two chambers pass different versions, they must reconcile "
        "them, either by sending amendments back and forth or by forming a conference committee of members from "
        "both. The compromise text must then pass both chambers again without changes.\n\nStep 5: The President. "
        "The enrolled bill goes to the President, who has ten days, not counting Sundays, to act. Signing it "
        "makes it law. The President may veto it and return it to Congress with objections. If Congress is in "
        "session and the President does nothing for ten days, the bill becomes law without a signature; if "
        "Congress has adjourned in that time, the bill dies, which is called a pocket veto.\n\nStep 6: "
        "Overriding a veto. Congress can override a veto with a two-thirds vote in both the House and the Senate. "
        "This is rare: since 1789 only a few percent of regular vetoes have been overridden.\n\nOnce enacted, the "
        "law receives a public law number, is published in the Statutes at Large, and is later arranged by "
        "subject in the United States Code. Federal agencies may then write regulations that put its details "
        "into practice, and courts may be asked to interpret it or to decide whether it is constitutional.",
    ),
)
