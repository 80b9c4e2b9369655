# nsm-rs default policy: true when some token on the path is past its "exp" claim.
# Query: data.nsm.tokens_expired (allowed when FALSE).
package nsm

default tokens_expired = false

tokens_expired {
	some i
	[_, claims, _] := io.jwt.decode(input.path_segments[i].token)
	claims.exp < time.now_ns() / 1000000000
}
