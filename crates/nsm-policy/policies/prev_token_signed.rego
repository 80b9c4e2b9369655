# nsm-rs default server policy: the token of the segment before this hop was signed by the peer
# that called us (the leaf certificate of its TLS identity). Fails on the first hop.
# Query: data.nsm.prev_token_signed (allowed when true).
package nsm

default prev_token_signed = false

prev_token_signed {
	caller := object.get(input, "index", 0) - 1
	caller >= 0
	signed_by_peer(input.path_segments[caller].token)
}

signed_by_peer(t) {
	io.jwt.verify_es256(t, input.auth_info.certificate) == true
}
