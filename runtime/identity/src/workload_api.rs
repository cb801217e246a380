//! The JWT half of the SPIFFE Workload API (`workload.proto`, service `SpiffeWorkloadAPI`) as a
//! tonic service, written by hand so the build needs no protoc and no code generation.
//! The messages are wire-compatible with the spiffe crate's generated client.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::codegen::{BoxFuture, BoxStream, Service, StdError, http};
use tonic::server::NamedService;
use tonic::{Request, Response, Status};

/// `JWTSVIDRequest`.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct JwtSvidRequest {
    /// Audiences the SVID must carry.
    #[prost(string, repeated, tag = "1")]
    pub audience: Vec<String>,
    /// The SPIFFE ID asked for ("" = the workload's default identity).
    #[prost(string, tag = "2")]
    pub spiffe_id: String,
}

/// `JWTSVIDResponse`.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct JwtSvidResponse {
    /// The issued SVIDs.
    #[prost(message, repeated, tag = "1")]
    pub svids: Vec<JwtSvidMessage>,
}

/// `JWTSVID`.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct JwtSvidMessage {
    /// Its SPIFFE ID.
    #[prost(string, tag = "1")]
    pub spiffe_id: String,
    /// The encoded token.
    #[prost(string, tag = "2")]
    pub svid: String,
    /// Operator hint.
    #[prost(string, tag = "3")]
    pub hint: String,
}

/// `JWTBundlesRequest`.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct JwtBundlesRequest {}

/// `JWTBundlesResponse`: trust domain (`spiffe://td`) → JWKS document.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct JwtBundlesResponse {
    /// The bundles.
    #[prost(map = "string, bytes", tag = "1")]
    pub bundles: HashMap<String, Vec<u8>>,
}

/// What a provider answers.
#[tonic::async_trait]
pub trait JwtWorkloadApi: Send + Sync + 'static {
    /// `FetchJWTSVID`.
    async fn fetch_jwt_svid(
        &self,
        request: Request<JwtSvidRequest>,
    ) -> Result<Response<JwtSvidResponse>, Status>;
    /// `FetchJWTBundles`: the current bundles at once, then one message per change.
    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<BoxStream<JwtBundlesResponse>>, Status>;
}

/// Refuses calls without `workload.spiffe.io: true`, as the SPIFFE Workload API spec (and SPIRE)
/// require: the header proves the caller is a Workload API client, not a confused proxy.
pub fn check_security_header<T>(request: &Request<T>) -> Result<(), Status> {
    match request
        .metadata()
        .get("workload.spiffe.io")
        .map(|v| v.as_bytes())
    {
        Some(b"true") => Ok(()),
        _ => Err(Status::invalid_argument(
            "security header missing from request",
        )),
    }
}

/// The tonic service routing `/SpiffeWorkloadAPI/*` to a [`JwtWorkloadApi`].
pub struct WorkloadApiServer<T> {
    inner: Arc<T>,
}

impl<T> WorkloadApiServer<T> {
    /// Serves `inner`.
    pub fn new(inner: Arc<T>) -> Self {
        Self { inner }
    }
}

impl<T> Clone for WorkloadApiServer<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<T> NamedService for WorkloadApiServer<T> {
    const NAME: &'static str = "SpiffeWorkloadAPI";
}

struct FetchSvid<T>(Arc<T>);

impl<T: JwtWorkloadApi> tonic::server::UnaryService<JwtSvidRequest> for FetchSvid<T> {
    type Response = JwtSvidResponse;
    type Future = BoxFuture<Response<JwtSvidResponse>, Status>;
    fn call(&mut self, request: Request<JwtSvidRequest>) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move { inner.fetch_jwt_svid(request).await })
    }
}

struct FetchBundles<T>(Arc<T>);

impl<T: JwtWorkloadApi> tonic::server::ServerStreamingService<JwtBundlesRequest>
    for FetchBundles<T>
{
    type Response = JwtBundlesResponse;
    type ResponseStream = BoxStream<JwtBundlesResponse>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;
    fn call(&mut self, request: Request<JwtBundlesRequest>) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move { inner.fetch_jwt_bundles(request).await })
    }
}

impl<T, B> Service<http::Request<B>> for WorkloadApiServer<T>
where
    T: JwtWorkloadApi,
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        match request.uri().path() {
            "/SpiffeWorkloadAPI/FetchJWTSVID" => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.unary(FetchSvid(inner), request).await)
            }),
            "/SpiffeWorkloadAPI/FetchJWTBundles" => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.server_streaming(FetchBundles(inner), request).await)
            }),
            // X.509 SVIDs and server-side validation are not offered: kernels authenticate to
            // NATS with JWT-SVIDs and verify them offline against the bundles.
            path => {
                let status =
                    Status::unimplemented(format!("{path} is not offered by ck's provider"));
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}
