# nsm-rs default client policy: the token of the segment after ours was signed by the server we
# called (the leaf certificate of its TLS identity). Query: data.nsm.next_token_signed (allowed when true).
package nsm

default next_token_signed = false

next_token_signed {
	callee := object.get(input, "index", 0) + 1
	callee < count(input.path_segments)
	signed_by_peer(input.path_segments[callee].token)
}

signed_by_peer(t) {
	io.jwt.verify_es256(t, input.auth_info.certificate) == true
}
