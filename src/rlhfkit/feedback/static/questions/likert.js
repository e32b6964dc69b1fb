// likert: a rating 1-7 (keys 1-7).
rlhfkit.register("likert", function (ctx) {
  const pick = ctx.choices(ctx.fieldset);
  return {
    collect: function () {
      return pick.value ? { answer: { score: parseInt(pick.value, 10) } } : { error: "Choose a rating from 1 to 7." };
    },
    key: function (k) { if (!(k >= "1" && k <= "7" && k.length === 1)) return false; pick.set(k); return true; },
  };
});
