# nsm-rs default policy: every path segment carries a token that decodes as a JWT.
# A path without segments passes. Query: data.nsm.tokens_valid (allowed when true).
package nsm

default tokens_valid = false

tokens_valid {
	count(input.path_segments) == 0
}

tokens_valid {
	segs := input.path_segments
	undecodable := {i | segs[i]; not jwt_ok(segs[i].token)}
	count(undecodable) == 0
}

jwt_ok(t) {
	[_, _, _] := io.jwt.decode(t)
}
