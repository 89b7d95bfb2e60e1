fn main() -> std::process::ExitCode {
    jcdi_forwarder::cli::main()
}
