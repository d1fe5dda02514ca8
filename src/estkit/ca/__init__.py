"""The certificate authority: policy and signing, no HTTP and no SQL."""
