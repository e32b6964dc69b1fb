// rank: one rank select per displayed response (1 = best; equal ranks are ties).
rlhfkit.register("rank", function (ctx) {
  return {
    collect: function () {
      const ranks = [];
      ctx.root.querySelectorAll("select[data-rank-pos]").forEach(function (s) {
        ranks[parseInt(s.dataset.rankPos, 10)] = s.value ? parseInt(s.value, 10) : null;
      });
      if (ranks.some(function (r) { return r === null; })) return { error: "Give every response a rank." };
      return { answer: { ranks: ranks } };
    },
  };
});
