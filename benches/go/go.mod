module taskctx/benches/go

go 1.21
