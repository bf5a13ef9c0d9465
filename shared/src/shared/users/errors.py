from shared.errors import Conflict, NotFound


class UserNotFound(NotFound):
    def __init__(self, user_id: int) -> None:
        super().__init__(f"user {user_id} does not exist")


class EmailTaken(Conflict):
    def __init__(self) -> None:
        super().__init__("a user with this email already exists")
