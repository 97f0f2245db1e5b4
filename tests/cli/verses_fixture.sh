# Verse lines in bible-kjv's form ("Ge1:3 the king walked by the river."),
# from micro_fixture.sh's words, into ./verses.txt: the input of
# `ferry data chat-kjv --from` in the fine-tuning tests. Sourced.
awk 'BEGIN { srand(11); split("Ge Exo 1Sm Psa", bk);
  split("the a one every that", det); split("shepherd king river city servant stone lamb", noun);
  split("walked spoke rested waited sang wept", verb); split("by near beyond under before", prep);
  for (b = 1; b <= 4; b++) for (c = 1; c <= 5; c++) for (v = 1; v <= 12; v++)
    printf "%s%d:%d %s %s %s %s the %s.\n", bk[b], c, v, det[int(rand()*5)+1], noun[int(rand()*7)+1],
           verb[int(rand()*6)+1], prep[int(rand()*5)+1], noun[int(rand()*7)+1] }' > verses.txt
