# nsm-rs default policy: consecutive tokens form a chain, i.e. the audience of each segment's token
# names the subject of the next one. Query: data.nsm.tokens_chained (allowed when true).
package nsm

default tokens_chained = false

tokens_chained {
	count(input.path_segments) < 2
}

tokens_chained {
	segs := input.path_segments
	last := count(segs) - 1
	broken := {i | segs[i]; i < last; not links(segs[i].token, segs[i + 1].token)}
	count(broken) == 0
}

links(from, to) {
	[_, a, _] := io.jwt.decode(from)
	[_, b, _] := io.jwt.decode(to)
	some k
	a.aud[k] == b.sub
}
